"""The ``unet serve`` application: one trained run, loaded once, behind HTTP.

Endpoints (see the README section "Serve"):

* ``GET /`` the page (``static/index.html``; its CSS and JavaScript under ``/static``);
* ``GET /healthz`` -> ``{"status": "ok"}``;
* ``GET /v1/model`` -> the run's facts (:meth:`Service.facts`);
* ``POST /v1/segment`` with a multipart field ``file`` -> JSON
  ``{id, width, height, foreground_fraction, components, quality, gray_scale,
  orientation, seconds, notes}``, or with
  ``?format=png|overlay|prob`` that image as a PNG (the same figures in the
  ``X-Unet-Result`` header, as JSON);
* ``POST /v1/preview`` with the same field -> the image as the 8-bit RGB PNG the
  overlay is drawn on (what the page shows; browsers cannot show 16-bit, TIFF or DICOM).

Every image goes through the one prediction path of ``unet predict``
(:func:`~unet_lowered.inference.polarity.predict_seen`: the network, with a second
look at a flagged X-ray with its gray scale inverted, then turned; then
:func:`~unet_lowered.inference.predictor.probs_to_mask` and
:func:`~unet_lowered.inference.predictor.mask_to_png`), so the mask is pixel for pixel
the ``<id>.png`` that ``unet predict RUN FILE`` writes (the run's chosen post-processing
included), and ``quality``, ``gray_scale`` and ``orientation`` are its columns in ``predictions.csv``
(:func:`~unet_lowered.inference.quality.mask_quality`). Uploads are written to a
temporary file and recognised by content (:mod:`unet_lowered.io.images`); the pixel
limit is checked from the header before decoding.

Requests never hurt the service: bad input gets a 4xx JSON ``{"error": "..."}`` naming
the problem, a failure inside the model a 500 (logged with its traceback). Inference
runs on ``workers`` threads, off the event loop; at most ``workers + queue`` requests
are admitted at once (after their upload has arrived, within 5 minutes and with no
pause over 30 s: a stalled upload holds no worker's place, and its upload place only
that long) and the others get a 503 at once. One log line per request: method,
path, status, milliseconds (499 for a client that hung up).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import shutil
import socket
import tempfile
import threading
import time
import unicodedata
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import unet_lowered
from unet_lowered.errors import UnetError
from unet_lowered.inference.overlay import overlay
from unet_lowered.inference.polarity import (
    look_notes,
    most_looks,
    predict_seen,
    second_look_applies,
    turned_look_applies,
)
from unet_lowered.inference.postprocess import count_components
from unet_lowered.inference.predictor import (
    PredictOptions,
    applied_threshold,
    applied_watershed,
    for_run,
    mask_to_png,
    postprocess_steps,
    predict_images,
    probs_to_mask,
    resolve_mode,
    resolve_tta,
    tta_group,
)
from unet_lowered.inference.tiling import tile_starts
from unet_lowered.inference.tta import tta_transforms
from unet_lowered.io import images
from unet_lowered.io.runs import METRICS_FILE, Run, load_run
from unet_lowered.model import output_size
from unet_lowered.training.config import RunConfig

LOG = logging.getLogger("unet_lowered.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page, its script and its style sheet (package data)."""

UPLOAD_FIELD = "file"
"""The multipart field that carries the image."""

UPLOAD_TIMEOUT_S = 300.0
"""Seconds a request's body may take to arrive (408 beyond): 64 MiB at about 220 KB/s. It
holds no worker or queue place meanwhile, so the limit only frees a stalled connection."""

UPLOAD_IDLE_S = 30.0
"""Seconds an upload may send nothing before it is dropped (408): a client that stops
sending frees its upload place after this, not after :data:`UPLOAD_TIMEOUT_S` (as a web
server's body timeout between two reads)."""

FORMATS = ("json", "png", "overlay", "prob")
"""What ``POST /v1/segment`` answers with (``?format=``)."""

RESULT_HEADER = "X-Unet-Result"
"""Response header of the image formats: the JSON figures of the result."""

_QUERY = frozenset(
    {
        "format",
        "threshold",
        "keep_largest",
        "fill_holes",
        "min_area",
        "watershed",
        "postprocess",
        "polarity",
        "orientation",
        "tta",
        "tta_transforms",
        "mode",
    }
)
_MB = 1024 * 1024

WORK_MEGAPIXELS = 128.0
"""Network input a request may cost by default, in megapixels (``max_passes`` None): as
many passes of the run's input tile, 7,812 for a 128x128 run, 1,953 for 256x256. The
README's "unet serve" section gives the figures behind it (under a minute per request
for a demo-sized run on two cores)."""

UPLOADS_BEYOND_CAPACITY = 4
"""Uploads received at once besides ``workers + queue`` (``uploads`` None)."""

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; "
        b"img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
)
"""On every answer. The page loads its script, style sheet and Web Worker from this
server, draws pictures from ``blob:`` URLs, and its icon is ``data:,``; nothing else."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Addresses that only this machine reaches: a server on one answers only to the
loopback names."""


# ---------------------------------------------------------------- settings and results


@dataclass(frozen=True)
class ServeSettings:
    """How ``unet serve`` runs.

    Attributes:
        workers: Images predicted at the same time (inference threads).
        queue: Requests that may wait for a worker; beyond ``workers + queue`` the
            service answers 503 at once.
        max_upload_mb: Largest request body accepted, in MiB (413 beyond).
        max_pixels: Largest image accepted, in pixels, read from the header (413 beyond).
        max_passes: Network passes of the run's input tile a request may cost (413
            beyond, before decoding; :func:`network_passes`); None: as many as
            :data:`WORK_MEGAPIXELS` of network input.
        uploads: Uploads received or held at once (bodies being read, and those of the
            requests admitted); beyond it a 503 before the body is read. None:
            ``workers + queue +`` :data:`UPLOADS_BEYOND_CAPACITY`.
        allowed_hosts: Names besides the address it listens on that a request's
            ``Host`` may give (a proxy's name; any port); ``"*"`` allows any.
        options: Default prediction and post-processing settings (those of
            ``unet predict``: steps left None take the run's choice); a request's query
            (``threshold``, ``keep_largest``, ``fill_holes``, ``min_area``,
            ``watershed``, ``postprocess``, ``tta``, ``tta_transforms``, ``mode``) overrides them.
    """

    workers: int = 1
    queue: int = 8
    max_upload_mb: float = 64.0
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    max_passes: int | None = None
    uploads: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    options: PredictOptions = field(default_factory=PredictOptions)

    def validate(self) -> ServeSettings:
        """Raise :class:`UnetError` naming a bad setting."""
        if self.workers < 1:
            raise UnetError(f"--workers must be at least 1, got {self.workers}")
        if self.queue < 0:
            raise UnetError(f"--queue must be 0 or more, got {self.queue}")
        if not self.max_upload_mb > 0:
            raise UnetError(f"--max-upload-mb must be above 0, got {self.max_upload_mb}")
        if self.max_pixels < 1:
            raise UnetError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.max_passes is not None and self.max_passes < 1:
            raise UnetError(f"--max-passes must be at least 1, got {self.max_passes}")
        if self.uploads is not None and self.uploads < self.workers + self.queue:
            raise UnetError(
                f"--uploads must be at least --workers + --queue ({self.workers + self.queue}), "
                f"got {self.uploads}"
            )
        for name in self.allowed_hosts:
            if not name or any(c in name for c in "/@ ") or name.startswith(":"):
                raise UnetError(
                    f"--allow-host {name!r}: not a host name (e.g. --allow-host scan.example.org)"
                )
        self.options.validate()
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * _MB)


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class BodyTooLarge(Exception):
    """The request body went over the upload limit while it was being received."""


class UploadStalled(Exception):
    """Nothing of the request body arrived for :data:`UPLOAD_IDLE_S` seconds."""


@dataclass(frozen=True)
class Result:
    """One segmented upload.

    Attributes:
        figures: The JSON answer: ``id, width, height, foreground_fraction, components,
            quality, seconds, notes``; ``quality`` is ``"ok"`` or ``"check: <reasons>"``
            (None for multi-class runs trained before their classes' statistics were
            recorded, which have no flag).
        png: The PNG asked for (mask, overlay or probability), or None for JSON.
    """

    figures: dict[str, Any]
    png: bytes | None = None


@dataclass(frozen=True)
class Work:
    """What one image costs the network, counted before it is decoded.

    Attributes:
        tiles: Input tiles of the run's ``image_size`` per look (1 in resize mode with
            same padding).
        views: Test-time augmentation views of each tile (1 without TTA).
        looks: Looks at the image at most: 1, or with ``polarity``/``orientation`` auto
            a flagged image's second looks (inverted, turned, both, mirrored).
    """

    tiles: int
    views: int
    looks: int

    @property
    def passes(self) -> int:
        """Network passes over one input tile, at most."""
        return self.tiles * self.views * self.looks


def network_passes(config: RunConfig, options: PredictOptions, height: int, width: int) -> Work:
    """The network passes an image of ``height x width`` costs at most with ``options``.

    Counted as :func:`~unet_lowered.inference.predictor.predict_prepared` and
    :func:`~unet_lowered.inference.polarity.second_look` spend them: resize mode with
    same padding predicts one input; tile mode (and valid padding) one input tile per
    :func:`~unet_lowered.inference.tiling.tile_starts` pair of the input (the image's
    size, or the run's in resize mode); each tile once per TTA view
    (:func:`~unet_lowered.inference.tta.tta_transforms`); and a flagged image again in
    every view the second look tries.
    """
    in_h, in_w = config.image_size
    th, tw = output_size(config.image_size, config.depth, config.padding)
    mode = resolve_mode(options.mode, config)
    if mode == "resize" and (th, tw) == (in_h, in_w):
        tiles = 1
    else:
        h, w = (height, width) if mode == "tile" else config.resize_size
        tiles = len(tile_starts(max(h, th), th, options.overlap)) * len(
            tile_starts(max(w, tw), tw, options.overlap)
        )
    group = tta_group(options, config)
    views = len(tta_transforms(group, square=in_h == in_w)) if group else 1
    return Work(tiles, views, most_looks(config, options))


# ---------------------------------------------------------------- the service


class _Places:
    """A count of places taken, at most ``limit``; taking never waits (a full count is
    answered at once, with a 503). Thread-safe."""

    def __init__(self, limit: int):
        self.limit = limit
        self._taken = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._taken >= self.limit:
                return False
            self._taken += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._taken -= 1

    @property
    def taken(self) -> int:
        with self._lock:
            return self._taken


class Service:
    """A run loaded once, the worker threads and the admission count.

    Args:
        run_dir: The run folder written by ``unet train``.
        settings: How to serve it.
        model: Use this model instead of loading ``RUN/model.keras`` (tests).

    Raises:
        UnetError: A bad run folder or setting.
    """

    def __init__(
        self, run_dir: str | Path, settings: ServeSettings | None = None, model: Any = None
    ) -> None:
        settings = (settings or ServeSettings()).validate()
        self.run: Run = load_run(run_dir)
        self.config = self.run.config
        options = dataclasses.replace(settings.options, max_pixels=settings.max_pixels)
        options = for_run(options, self.config)
        if options.tta_on:
            resolve_tta(options.tta_transforms, self.config)
        self.options = options.validate()
        self.settings = settings
        self.model = model if model is not None else self.run.model()
        self.metrics = _read_metrics(self.run.dir)
        self.max_passes = settings.max_passes or max(
            1,
            round(WORK_MEGAPIXELS * 1e6 / (self.config.image_size[0] * self.config.image_size[1])),
        )
        self.upload_places = settings.uploads or self.capacity + UPLOADS_BEYOND_CAPACITY
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="unet-serve")
        self._requests = _Places(self.capacity)  # admitted: workers + queue at most
        self._uploads = _Places(self.upload_places)  # bodies received or held at once

    @property
    def capacity(self) -> int:
        return self.settings.workers + self.settings.queue

    def admit(self) -> bool:
        """Take a place for one request; False when ``workers + queue`` are taken."""
        return self._requests.take()

    def release(self) -> None:
        self._requests.give()

    @property
    def admitted(self) -> int:
        return self._requests.taken

    def start_upload(self) -> bool:
        """Take a place for one upload before its body is read; False when all are taken."""
        return self._uploads.take()

    def end_upload(self) -> None:
        self._uploads.give()

    @property
    def uploads(self) -> int:
        return self._uploads.taken

    async def in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on an inference thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Predict one blank image, so the first request does not pay for tracing."""
        blank = np.zeros(self.config.image_size, np.uint8)
        predict_images(self.model, [blank], self.config, self.options)

    # -- what the run is

    def facts(self) -> dict[str, Any]:
        """``GET /v1/model``: the run's configuration, validation scores and versions."""
        import keras

        c, o = self.config, self.options
        keep, holes, min_area = postprocess_steps(o, c)
        metrics = self.metrics or {}
        return {
            "run": str(self.run.dir),
            "run_name": self.run.dir.name,
            "num_classes": c.num_classes,
            "label_values": None if c.label_values is None else list(c.label_values),
            "class_names": None if c.class_names is None else list(c.class_names),
            "image_size": list(c.image_size),
            "channels": c.channels,
            "input_mode": c.input_mode,
            "padding": c.padding,
            "depth": c.depth,
            "resize_size": list(c.resize_size),
            "threshold": c.threshold,
            "precision": c.precision,
            "validation_dice": metrics.get("val_dice"),
            "validation_iou": metrics.get("val_iou"),
            "validation_note": metrics.get("val_dice_note"),
            "best_epoch": metrics.get("best_epoch"),
            "prediction": {
                "mode": o.mode,
                "threshold": applied_threshold(o, c),
                "keep_largest": keep,
                "fill_holes": holes,
                "min_area": min_area,
                "watershed": applied_watershed(o, c),
                "postprocess": o.postprocess,
                "tta": tta_group(o, c),
                "polarity": o.polarity,
                "second_look": second_look_applies(c, o),
                "orientation": o.orientation,
                "turned_look": turned_look_applies(c, o),
            },
            "postprocess_chosen": None if c.postprocess is None else dict(c.postprocess),
            "mask_stats": None if c.mask_stats is None else dict(c.mask_stats),
            "versions": {
                "trained_with": {
                    "unet_lowered": c.unet_lowered_version,
                    "keras": c.keras_version,
                    "backend": c.backend,
                    "config_version": c.version,
                },
                "serving": {
                    "unet_lowered": unet_lowered.__version__,
                    "keras": keras.__version__,
                    "backend": keras.backend.backend(),
                },
            },
            "limits": {
                "max_upload_mb": self.settings.max_upload_mb,
                "max_pixels": self.settings.max_pixels,
                "max_passes": self.max_passes,
                "workers": self.settings.workers,
                "queue": self.settings.queue,
                "uploads": self.upload_places,
            },
            "formats": list(FORMATS),
        }

    def request_options(self, query: dict[str, Any]) -> PredictOptions:
        """The server's options with a request's query values laid over them.

        As in ``unet predict``: ``keep_largest=0`` keeps every object, a step not given
        takes the server's default or else the run's choice, ``postprocess=false``
        leaves the run's choice off.

        Raises:
            RequestError: 400 for a bad value (the message says which values are valid).
        """
        changes = {k: v for k, v in query.items() if v is not None}
        if changes.get("tta") is False and "tta_transforms" not in changes:
            changes["tta_transforms"] = "auto"  # off for this request, whatever the server's group
        try:
            options = dataclasses.replace(self.options, **changes)
            options = for_run(options, self.config)
            options.validate()
            if options.tta_on:
                resolve_tta(options.tta_transforms, self.config)
        except UnetError as e:
            raise RequestError(400, _query_wording(str(e))) from None
        return options

    # -- the work, on an inference thread

    def segment(self, upload: IO[bytes], name: str, options: PredictOptions, fmt: str) -> Result:
        """Decode an upload, predict it, and make the answer (JSON figures, maybe a PNG).

        Raises:
            RequestError: 4xx for bad input, 500 when the model fails (logged).
        """
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="unet-serve-") as tmp:
            image = self._decode(upload, Path(tmp) / "upload", name, notes, options)
        try:
            seen = predict_seen(self.model, [image], self.config, options)[0]
            probs = seen.probs
            mask = probs_to_mask(probs, self.config, options)
            notes += look_notes(
                name, seen.look, options.polarity, ("polarity=keep", "orientation=keep")
            )
            png = None
            if fmt == "png":
                png = _encode_png(mask_to_png(mask, self.config))
            elif fmt == "overlay":
                png = _encode_png(overlay(image, mask))
            elif fmt == "prob":
                png = _encode_png(_prob_png(probs))
            h, w = mask.shape
            figures = {
                "id": request_id,
                "width": w,
                "height": h,
                "foreground_fraction": round(float(np.count_nonzero(mask)) / mask.size, 6),
                "components": count_components(mask),
                "quality": seen.quality(mask, self.config) or None,
                "gray_scale": seen.gray_scale,
                "orientation": seen.orientation,
                "seconds": round(time.perf_counter() - started, 4),
                "notes": notes,
            }
        except UnetError as e:  # e.g. an image the run's settings cannot take
            raise RequestError(422, f"{name}: {e}") from None
        except Exception as e:
            LOG.exception("the model failed on %s (request %s)", name, request_id)
            raise RequestError(
                500,
                f"{name}: the model failed on this image ({type(e).__name__}: {e}); "
                f"the server log has the details (request {request_id})",
            ) from None
        return Result(figures, png)

    def preview(self, upload: IO[bytes], name: str) -> Result:
        """The upload as an 8-bit RGB PNG, exactly as the overlay draws it (no model)."""
        with tempfile.TemporaryDirectory(prefix="unet-serve-") as tmp:
            image = self._decode(upload, Path(tmp) / "upload", name, [])
        view = overlay(image, np.zeros(image.shape[:2], bool))
        h, w = image.shape[:2]
        return Result({"width": w, "height": h}, _encode_png(view))

    def _check_work(self, name: str, height: int, width: int, options: PredictOptions) -> None:
        """413 for an image whose prediction would cost more than ``max_passes`` network
        passes (:func:`network_passes`), naming the options with which it would fit.

        413, as for ``--max-pixels``: the image is larger than the service is willing to
        process this way; the same request with another image or options fits, so it is
        not a malformed (400) or unprocessable (422) one.
        """
        work = network_passes(self.config, options, height, width)
        limit = self.max_passes
        if work.passes <= limit:
            return
        parts = [f"{work.tiles:,} tile(s)" if work.tiles > 1 else "1 input"]
        if work.views > 1:
            parts.append(f"{work.views} TTA views")
        if work.looks > 1:
            parts.append(f"up to {work.looks} looks at a flagged image")
        changes = []
        if options.mode == "tile":
            changes.append(("mode=resize", {"mode": "resize"}))
        if work.views > 1:
            changes.append(("tta=false", {"tta": False, "tta_transforms": "auto"}))
        if work.looks > 1:
            changes.append(
                ("polarity=keep&orientation=keep", {"polarity": "keep", "orientation": "keep"})
            )

        def fits(change: dict[str, Any]) -> bool:
            changed = dataclasses.replace(options, **change)
            return network_passes(self.config, changed, height, width).passes <= limit

        fitting = [text for text, change in changes if fits(change)]
        together = {k: v for _, change in changes for k, v in change.items()}
        if not fitting and len(changes) > 1 and fits(together):
            fitting = ["&".join(text for text, _ in changes)]
        advice = f"send it with {' or '.join(fitting)}, or" if fitting else "send"
        raise RequestError(
            413,
            f"{name}: {width}x{height} would take up to {work.passes:,} network passes "
            f"({' x '.join(parts)} of {self.config.image_size[0]}x{self.config.image_size[1]}), "
            f"over this service's limit of {limit:,} per request; {advice} a smaller image "
            "(or ask the server's operator to raise it: unet serve --max-passes)",
        )

    def _decode(
        self,
        upload: IO[bytes],
        path: Path,
        name: str,
        notes: list[str],
        options: PredictOptions | None = None,
    ) -> np.ndarray:
        """Write the upload to ``path``, check its header against the limits (pixels; with
        ``options``, the network passes it would cost), decode it.

        What :func:`~unet_lowered.io.images.read_image` notes (first frame of several,
        EXIF orientation applied, ...) is appended to ``notes``, naming the upload.
        """
        upload.seek(0)
        try:
            with open(path, "wb") as f:
                shutil.copyfileobj(upload, f, 1024 * 1024)
        except OSError as e:
            raise _no_room(e) from None
        if path.stat().st_size == 0:
            raise RequestError(400, f"{name}: the uploaded file is empty")
        if images.sniff_format(path) is None:
            kinds = [f.upper() for f in images.FORMATS]
            raise RequestError(
                415,
                f"{name}: not an image this service reads "
                f"(expected {', '.join(kinds[:-1])} or {kinds[-1]} content)",
            )
        try:
            header = images.read_header(path)
        except UnetError as e:
            raise RequestError(422, _rename(e, path, name)) from None
        limit = self.settings.max_pixels
        if header.pixels > limit:
            raise RequestError(
                413,
                f"{name}: {header.width}x{header.height} is {header.pixels / 1e6:.1f} "
                f"megapixels, over this service's limit of {limit / 1e6:.1f}; send a "
                "smaller image, or ask the server's operator to raise it (unet serve --max-pixels)",
            )
        if options is not None:
            self._check_work(name, header.height, header.width, options)
        try:
            image = images.read_image(path, limit, notes)
            notes[:] = [_rename(note, path, name) for note in notes]
            return image
        except UnetError as e:
            raise RequestError(422, _rename(e, path, name)) from None
        except (OSError, ValueError, cv2.error) as e:
            raise RequestError(
                422, f"{name}: cannot decode the image ({type(e).__name__}: {e})"
            ) from None


def _no_room(error: OSError) -> RequestError:
    """507 for an upload the server's temporary folder has no room for (a 500 with a
    traceback in the log before)."""
    folder = tempfile.gettempdir()
    return RequestError(
        507,
        f"the server cannot store the upload in its temporary folder {folder} "
        f"({error.strerror or error}); try a smaller image, or ask its operator to free "
        "space there (or set TMPDIR)",
    )


def _read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/metrics.json`` (validation Dice and IoU), or None when absent or unreadable."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        LOG.warning("%s: unreadable (%s); validation scores not shown", path, e)
        return None
    return values if isinstance(values, dict) else None


def _rename(error: object, path: Path, name: str) -> str:
    """The message of ``error`` (an exception or a note) with the temporary file's path replaced by the upload's name."""
    return str(error).replace(str(path), name)


def _query_wording(message: str) -> str:
    """CLI option names in a message (``--keep-largest``, ``--no-tta``) as query parameters
    (``keep_largest``, ``tta=false``)."""
    message = re.sub(
        r"--no-([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_") + "=false", message
    )
    return re.sub(r"--([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_"), message)


def _encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB or gray array, encoded as :func:`images.write_png` does."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise UnetError("could not encode the PNG")
    return buf.tobytes()


def _prob_png(probs: np.ndarray) -> np.ndarray:
    """8-bit probabilities as ``unet predict --save-prob png`` writes them.

    One class: the foreground probability (``<id>_prob.png``). Several classes: the
    probability of any foreground class, ``1 - p(background)``.
    """
    p = probs[:, :, 0] if probs.shape[2] == 1 else 1.0 - probs[:, :, 0]
    return np.clip(p * 255 + 0.5, 0, 255).astype(np.uint8)


def _base_name(filename: str | None) -> str:
    """The file's own name from a multipart ``filename``: the text after its last ``/``
    or ``\\`` (a browser sends the name alone; older ones and other clients a path, of
    either kind), with every control, bidi and other invisible format character (U+202E
    would turn ``gnp.exe`` round on screen) and line separator replaced by ``_``."""
    name = re.split(r"[/\\]", filename or "")[-1]
    return "".join(
        "_" if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") else c
        for c in name
    )


def _stem(filename: str | None) -> str:
    """The upload's name without its last suffix (``scan.tar.png`` -> ``scan.tar``)."""
    name = _base_name(filename)
    stem = name.rsplit(".", 1)[0] if name.rfind(".") > 0 else name
    return stem[:100] or "image"


def _safe_stem(filename: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", _stem(filename))


def _disposition(upload_name: str | None, suffix: str) -> str:
    """``inline`` with ``<stem>_<suffix>.png``: the stem in ASCII (:func:`_safe_stem`) and,
    when the upload's stem was not, also as RFC 6266's ``filename*`` in UTF-8, which
    browsers prefer (``ünï 肺.png`` comes back as itself, not ``_n_.png``); control and
    bidi characters are ``_`` in both (:func:`_base_name`)."""
    ascii_name = f"{_safe_stem(upload_name)}_{suffix}.png"
    stem = _stem(upload_name)
    if f"{stem}_{suffix}.png" == ascii_name:
        return f'inline; filename="{ascii_name}"'
    encoded = urllib.parse.quote(f"{stem}_{suffix}.png", safe="")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"


def _display_name(filename: str | None) -> str:
    """The upload's name as messages give it (:func:`_base_name`), or ``the upload``."""
    return (_base_name(filename) or "the upload")[:200]


# ---------------------------------------------------------------- middleware


class RequestLog:
    """ASGI middleware: one log line per request, ``METHOD /path STATUS 12.3 ms``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ms = (time.perf_counter() - started) * 1000
            LOG.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, ms)


def host_names(host: str, port: int, allowed: tuple[str, ...] = ()) -> frozenset[str]:
    """The ``Host`` values a server listening on ``host:port`` answers to (lower case).

    On a loopback address ``localhost``, ``127.0.0.1`` and ``[::1]`` with the port; on
    another, that address with the port (and on all of them, ``0.0.0.0`` or ``::``, the
    loopback names too); and the ``allowed`` names with any port or none.
    """
    names = {f"{name}:{port}" for name in ("localhost", "127.0.0.1", "[::1]")}
    if host not in (*LOOPBACK, "0.0.0.0", "::"):
        names = {f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}
    if port == 80:
        names |= {name.rsplit(":", 1)[0] for name in names}
    return frozenset(n.lower() for n in names) | frozenset(a.lower() for a in allowed)


def _host_allowed(host: str, hosts: frozenset[str]) -> bool:
    """``host`` (a lower-case ``Host`` value) is in ``hosts``, or its name without the
    port is (a name allowed with any port), or ``hosts`` holds ``*``."""
    name = host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
    return host in hosts or name in hosts or "*" in hosts


class Guard:
    """ASGI middleware: the answers' security headers, the ``Host`` check, cross-site posts.

    * Every answer gets :data:`SECURITY_HEADERS` (no MIME sniffing, no framing, a
      Content-Security-Policy of this server only).
    * With ``hosts`` (:func:`host_names`), a request whose ``Host`` is none of them gets a
      400: a web page whose name was pointed at this address (DNS rebinding) cannot read
      ``/v1/model`` (which names the run's folder) or use the service.
    * A request other than GET, HEAD and OPTIONS whose ``Origin`` is not this server's
      (``http://`` + its ``Host``) gets a 403: another site's form cannot post here. A
      page of this server sends its own origin; curl and scripts send none.
    """

    def __init__(self, app: Any, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: dict) -> None:
            if message["type"] == "http.response.start":
                given = {k.lower() for k, _ in message.get("headers") or []}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in given]
                message = {**message, "headers": [*(message.get("headers") or []), *extra]}
            await send(message)

        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = self._refusal(scope["method"], host, headers.get(b"origin"))
        if refusal is not None:
            status, message = refusal
            await JSONResponse({"error": message}, status)(scope, receive, secured)
            return
        await self.app(scope, receive, secured)

    def _refusal(self, method: str, host: str, origin: bytes | None) -> tuple[int, str] | None:
        if self.hosts is not None and not _host_allowed(host.lower(), self.hosts):
            shown = ascii(host)[1:-1] if host else "(none)"
            names = ", ".join(sorted(n for n in self.hosts if ":" in n) or sorted(self.hosts))
            return (
                400,
                f"Host {shown} is not this server's; it answers to {names}. Open it by one "
                "of those, or ask its operator to allow the name (unet serve --allow-host)",
            )
        if origin is None or method in ("GET", "HEAD", "OPTIONS"):
            return None
        text = origin.decode("latin-1")
        if text.lower() in (f"http://{host}".lower(), f"https://{host}".lower()):
            return None
        return (
            403,
            f"a {method} from the page of {ascii(text)[1:-1]} is refused: only this server's "
            "own page may post here (other clients send no Origin header)",
        )


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with a 413.

    A declared ``Content-Length`` over the limit is refused before anything is read;
    a body without one (chunked) is counted as it arrives, and reading past the limit
    raises :class:`BodyTooLarge` in whoever reads it. Until the body's last part has
    arrived, a wait of over :data:`UPLOAD_IDLE_S` for the next part raises
    :class:`UploadStalled` the same way.
    """

    def __init__(self, app: Any, max_bytes: int, message: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"error": self.message}, 413)(scope, receive, send)
            return
        received = 0
        started = body_done = False

        async def counted() -> dict:
            nonlocal received, body_done
            if body_done:  # e.g. waiting for a disconnect: no limit on that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), UPLOAD_IDLE_S)
            except TimeoutError:
                raise UploadStalled from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise BodyTooLarge(self.message)
            return message

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge:
            if started:
                raise
            await JSONResponse({"error": self.message}, 413)(scope, receive, send)


# ---------------------------------------------------------------- the application


def create_app(
    run_dir: str | Path,
    settings: ServeSettings | None = None,
    *,
    model: Any = None,
    warm_up: bool = True,
    address: tuple[str, int] | None = None,
) -> FastAPI:
    """The FastAPI application serving one run (loaded here, once).

    Args:
        run_dir: The run folder written by ``unet train``.
        settings: Workers, queue, limits and default prediction options.
        model: A model to use instead of ``RUN/model.keras`` (tests).
        warm_up: Predict one blank image before serving.
        address: The host and port the server listens on: a request's ``Host`` must
            name them (:func:`host_names`, with ``settings.allowed_hosts``). None: any
            ``Host`` (a server of your own in front checks it).

    Returns:
        The application; its :class:`Service` is ``app.state.service``.

    Raises:
        UnetError: A bad run folder or setting.
    """
    service = Service(run_dir, settings, model)
    if warm_up:
        service.warm_up()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="unet serve",
        version=unet_lowered.__version__,
        docs_url=None,  # Swagger UI would load its script from the internet
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    limit_mb = service.settings.max_upload_mb
    app.add_middleware(
        BodyLimit,
        max_bytes=service.settings.max_upload_bytes,
        message=f"the upload is over this service's limit of {limit_mb:g} MB; send a smaller "
        "file, or ask the server's operator to raise it (unet serve --max-upload-mb)",
    )
    hosts = None
    if address is not None:
        hosts = host_names(address[0], address[1], service.settings.allowed_hosts)
    app.add_middleware(Guard, hosts=hosts)  # around the others: its headers on every answer
    app.add_middleware(RequestLog)  # added last: outermost, so it logs every answer
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", include_in_schema=False, methods=["GET", "HEAD"])
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    # HEAD (uptime probes) answers as GET; kept out of the schema, where it would repeat
    # GET's operation id
    @app.get("/healthz")
    @app.head("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    @app.head("/v1/model", include_in_schema=False)
    async def model_facts() -> dict[str, Any]:
        return service.facts()

    @app.post(
        "/v1/segment",
        openapi_extra=_UPLOAD_BODY,
        responses={
            200: {
                "description": "The figures as JSON (format=json), or the mask, overlay or "
                "probability as a PNG (format=png|overlay|prob) with the figures in the "
                f"{RESULT_HEADER} header.",
                "content": {
                    "application/json": {"schema": _FIGURES_SCHEMA},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                },
                "headers": {
                    RESULT_HEADER: {
                        "description": "The JSON figures (image formats only)",
                        "schema": {"type": "string"},
                    }
                },
            },
            **_REFUSALS,
        },
    )
    async def segment(
        request: Request,
        fmt: str = Query("json", alias="format"),
        threshold: float | None = None,
        keep_largest: int | None = None,
        fill_holes: bool | None = None,
        min_area: int | None = None,
        watershed: float | None = None,
        postprocess: bool | None = None,
        polarity: str | None = None,
        orientation: str | None = None,
        tta: bool | None = None,
        tta_transforms: str | None = None,
        mode: str | None = None,
    ) -> Response:
        """Segment the image in the multipart field ``file``."""
        _check_query(request)
        if fmt not in FORMATS:
            raise RequestError(400, f"format={fmt} is not one of {', '.join(FORMATS)}")
        options = service.request_options(
            {
                "threshold": threshold,
                "keep_largest": keep_largest,
                "fill_holes": fill_holes,
                "min_area": min_area,
                "watershed": watershed,
                "postprocess": postprocess,
                "polarity": polarity,
                "orientation": orientation,
                "tta": tta,
                "tta_transforms": tta_transforms,
                "mode": mode,
            }
        )
        result, filename = await _with_upload(
            service, request, lambda f, name: service.segment(f, name, options, fmt)
        )
        if result.png is None:
            return JSONResponse(result.figures)
        suffix = {"png": "mask", "overlay": "overlay", "prob": "prob"}[fmt]
        return _png_response(result, filename, suffix)

    @app.post(
        "/v1/preview",
        openapi_extra=_UPLOAD_BODY,
        responses={
            200: {
                "description": "The image as the 8-bit RGB PNG the overlay is drawn on.",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_REFUSALS,
        },
        response_class=Response,
    )
    async def preview(request: Request) -> Response:
        """The uploaded image as an 8-bit RGB PNG (what the page shows under the mask)."""
        _check_query(request, allowed=frozenset())
        result, filename = await _with_upload(service, request, service.preview)
        return _png_response(result, filename, "view")

    return app


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "The image: PNG (8 or 16 bit), JPEG, TIFF, BMP, "
                            "GIF or DICOM, recognised by content",
                        }
                    },
                }
            }
        },
    }
}
"""The OpenAPI request body of the upload endpoints (they parse the multipart body
themselves, so FastAPI does not see the field)."""

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_FIGURES_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "foreground_fraction": {"type": "number"},
        "components": {"type": "integer"},
        "quality": {"type": "string", "nullable": True},
        "gray_scale": {"type": "string"},
        "orientation": {"type": "string"},
        "seconds": {"type": "number"},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"description": what, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, what in [
        (400, "An empty file, no field 'file' or two, a malformed body, a bad option value"),
        (408, "The upload did not arrive within 5 minutes"),
        (413, "An upload over --max-upload-mb, or an image over --max-pixels"),
        (415, "Not multipart/form-data, or content that is not an image"),
        (422, "A corrupt image, or a query value of the wrong type"),
        (500, "A failure inside the model (logged)"),
        (503, "Busy: every worker and queue place is taken (Retry-After: 1)"),
        (507, "No room for the upload in the server's temporary folder"),
    ]
}
_REFUSALS[503]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}

_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def _value_wording(err: dict[str, Any]) -> str:
    """One plain sentence for a query value of the wrong type (pydantic's ``int_parsing``:
    'Input should be a valid integer, unable to parse string as an integer')."""
    name = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
    kind = _KINDS.get(str(err.get("type", "")).split("_")[0])
    if kind is None:
        return f"query {name}: {err.get('msg', 'invalid')}"
    value = err.get("input")
    example = {"a whole number": "2", "a number": "0.4", "true or false": "true"}[kind]
    return f"{name}={value} is not {kind} (e.g. {name}={example})"


def _check_query(request: Request, allowed: frozenset[str] = _QUERY) -> None:
    """400 for a query parameter the endpoint does not take, or one given twice (which
    value was meant is not ours to guess)."""
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise RequestError(
            400, f"unknown query parameter(s): {', '.join(unknown)} (this endpoint takes: {known})"
        )
    twice = sorted(k for k in set(request.query_params) if len(request.query_params.getlist(k)) > 1)
    if twice:
        raise RequestError(
            400, f"query parameter(s) given more than once: {', '.join(twice)}; give each once"
        )


async def _with_upload(
    service: Service, request: Request, work: Callable[[IO[bytes], str], Result]
) -> tuple[Result, str | None]:
    """Parse the multipart field ``file``, then admit the request and run ``work`` on a
    worker.

    The body is read before admission, within :data:`UPLOAD_TIMEOUT_S`: a slow or
    stalled upload holds no worker's or queue place (and gets a 408 in the end), so a
    few idle connections cannot turn every other request away with a 503. It holds one
    of ``service.upload_places`` from before its body is read until its answer: beyond
    those, a 503 comes before the body is read, so uploads cannot fill the temporary
    folder while every worker is busy.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(
            415,
            f"expected a multipart/form-data upload with the image in the field "
            f"'{UPLOAD_FIELD}' (curl -F {UPLOAD_FIELD}=@scan.png ...), "
            f"got {content_type or 'no content type'}",
        )
    if not service.start_upload():
        raise RequestError(
            503,
            f"busy: {service.upload_places} uploads are already being received or served; "
            "retry in a moment",
            headers={"Retry-After": "1"},
        )
    try:
        return await _read_and_run(service, request, work)
    finally:
        service.end_upload()


async def _read_and_run(
    service: Service, request: Request, work: Callable[[IO[bytes], str], Result]
) -> tuple[Result, str | None]:
    """:func:`_with_upload` once the upload has a place: read it, admit it, run it."""
    try:
        form = await asyncio.wait_for(
            request.form(max_files=4, max_fields=16), timeout=UPLOAD_TIMEOUT_S
        )
    except TimeoutError:
        raise RequestError(
            408, f"the upload did not arrive within {UPLOAD_TIMEOUT_S:g} s; send it again"
        ) from None
    except BodyTooLarge as e:
        raise RequestError(413, str(e)) from None
    except UploadStalled:
        raise RequestError(
            408, f"the upload stalled: nothing arrived for {UPLOAD_IDLE_S:g} s; send it again"
        ) from None
    except HTTPException as e:
        raise RequestError(400, f"the multipart body is malformed: {e.detail}") from None
    except OSError as e:  # Starlette spools large parts to the temporary folder
        raise _no_room(e) from None
    try:
        uploads = form.getlist(UPLOAD_FIELD)
        if not uploads and not form and int(request.headers.get("content-length") or 0) > 0:
            raise RequestError(  # a body arrived, but not one complete part of it
                400,
                "the multipart body is malformed or cut off (no complete part in it); "
                f"send the image as {UPLOAD_FIELD}=@scan.png",
            )
        if not uploads:
            got = ", ".join(sorted(set(form.keys()))) or "none"
            raise RequestError(
                400,
                f"no field '{UPLOAD_FIELD}' in the upload (fields sent: {got}); "
                f"send the image as {UPLOAD_FIELD}=@scan.png",
            )
        if len(uploads) > 1:
            raise RequestError(
                400,
                f"{len(uploads)} fields '{UPLOAD_FIELD}' in the upload; send one image per request",
            )
        others = sorted(set(form.keys()) - {UPLOAD_FIELD})
        if others:  # e.g. -F threshold=0.4: it would be ignored, so say where options go
            raise RequestError(
                400,
                f"unexpected field(s) in the upload: {', '.join(others)}; send only the "
                f"image as {UPLOAD_FIELD}=@scan.png, options in the query string "
                "(/v1/segment?threshold=0.4)",
            )
        upload = uploads[0]
        if isinstance(upload, str):
            raise RequestError(
                400,
                f"the field '{UPLOAD_FIELD}' holds text, not a file; "
                f"send the image as {UPLOAD_FIELD}=@scan.png",
            )
        if not service.admit():
            raise RequestError(
                503,
                f"busy: {service.capacity} requests are already being served or waiting "
                f"(workers {service.settings.workers} + queue {service.settings.queue}); "
                "retry in a moment",
                headers={"Retry-After": "1"},
            )
        try:
            result = await service.in_worker(work, upload.file, _display_name(upload.filename))
        finally:
            service.release()
        return result, upload.filename
    finally:
        await form.close()


def _png_response(result: Result, upload_name: str | None, suffix: str) -> Response:
    return Response(
        result.png,
        media_type="image/png",
        headers={
            RESULT_HEADER: json.dumps(result.figures),
            "Content-Disposition": _disposition(upload_name, suffix),
            "Cache-Control": "no-store",
        },
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON ``{"error": "..."}``."""

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        message = {
            404: f"no such endpoint: {where} (see GET /v1/model, POST /v1/segment)",
            405: f"method not allowed: {where}",
        }.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [_value_wording(err) for err in exc.errors()]
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, 422)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client hung up mid-upload: nothing failed here and nobody reads the answer;
        # logged as nginx's 499, not as a 500.
        LOG.info("%s %s: the client disconnected", request.method, request.url.path)
        return JSONResponse({"error": "the client disconnected"}, 499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        LOG.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server log has the details"},
            500,
        )


# ---------------------------------------------------------------- the server


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port).

    Raises:
        UnetError: The address cannot be used (taken, not this machine's, no permission).
    """
    if not 0 <= port <= 65535:
        raise UnetError(f"--port {port}: not a TCP port; use 1-65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise UnetError(f"--host {host}: not an address to listen on ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UnetError(
            f"{host}:{port}: cannot listen there ({e.strerror or e}); "
            "choose another --port (or stop what uses it)"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve_run(
    run_dir: str | Path,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    echo: Callable[[str], None] = print,
) -> None:
    """``unet serve``: listen, load the run once, serve until interrupted.

    Raises:
        UnetError: A bad run folder or setting, or an address that cannot be used.
    """
    import uvicorn

    settings = (settings or ServeSettings()).validate()
    _configure_logging()
    sock = listen(host, port)
    try:
        bound = sock.getsockname()[1]
        app = create_app(run_dir, settings, address=(host, bound))
        shown = f"[{host}]" if ":" in host else host
        config = uvicorn.Config(
            app,
            log_config=None,  # our one line per request, not uvicorn's access log
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        echo(
            f"serving {run_dir} on http://{shown}:{bound}/ "
            f"(workers {settings.workers}, queue {settings.queue}); Ctrl+C stops"
        )
        if host not in LOOPBACK:
            names = ", ".join(sorted(host_names(host, bound, settings.allowed_hosts)))
            echo(
                f"note: listening on {host}: anyone who can reach this address can use the "
                f"service (there is no authentication); it answers to Host {names} "
                "(--allow-host adds a name)"
            )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _configure_logging() -> None:
    """Request lines and errors on stderr, with the time."""
    if not LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        LOG.addHandler(handler)
        LOG.propagate = False
    LOG.setLevel(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn")
    if not uvicorn_log.handlers:
        uvicorn_log.addHandler(logging.StreamHandler())
    uvicorn_log.setLevel(logging.WARNING)


__all__ = [
    "FORMATS",
    "RESULT_HEADER",
    "STATIC_DIR",
    "UPLOAD_FIELD",
    "RequestError",
    "Result",
    "ServeSettings",
    "Service",
    "Work",
    "create_app",
    "host_names",
    "listen",
    "network_passes",
    "serve_run",
]
