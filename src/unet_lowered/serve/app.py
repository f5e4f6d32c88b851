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
are admitted at once (after their upload has arrived, within 5 minutes: a stalled upload
holds no place) and the others get a 503 at once. One log line per request: method,
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
    resolve_tta,
    tta_group,
)
from unet_lowered.io import images
from unet_lowered.io.runs import METRICS_FILE, Run, load_run

LOG = logging.getLogger("unet_lowered.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page, its script and its style sheet (package data)."""

UPLOAD_FIELD = "file"
"""The multipart field that carries the image."""

UPLOAD_TIMEOUT_S = 300.0
"""Seconds a request's body may take to arrive (408 beyond): 64 MiB at about 220 KB/s. It
holds no worker or queue place meanwhile, so the limit only frees a stalled connection."""

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
        options: Default prediction and post-processing settings (those of
            ``unet predict``: steps left None take the run's choice); a request's query
            (``threshold``, ``keep_largest``, ``fill_holes``, ``min_area``,
            ``watershed``, ``postprocess``, ``tta``, ``tta_transforms``, ``mode``) overrides them.
    """

    workers: int = 1
    queue: int = 8
    max_upload_mb: float = 64.0
    max_pixels: int = images.DEFAULT_MAX_PIXELS
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


# ---------------------------------------------------------------- the service


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
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="unet-serve")
        self._lock = threading.Lock()
        self._admitted = 0

    # -- admission: at most workers + queue requests at once

    @property
    def capacity(self) -> int:
        return self.settings.workers + self.settings.queue

    def admit(self) -> bool:
        """Take a place for one request; False when ``workers + queue`` are taken."""
        with self._lock:
            if self._admitted >= self.capacity:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    @property
    def admitted(self) -> int:
        with self._lock:
            return self._admitted

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
                "workers": self.settings.workers,
                "queue": self.settings.queue,
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
            image = self._decode(upload, Path(tmp) / "upload", name, notes)
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

    def _decode(self, upload: IO[bytes], path: Path, name: str, notes: list[str]) -> np.ndarray:
        """Write the upload to ``path``, check its header against the limit, decode it.

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


def _safe_stem(filename: str | None) -> str:
    stem = Path(filename or "image").stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:100]


def _disposition(upload_name: str | None, suffix: str) -> str:
    """``inline`` with ``<stem>_<suffix>.png``: the stem in ASCII (:func:`_safe_stem`) and,
    when the upload's stem was not, also as RFC 6266's ``filename*`` in UTF-8, which
    browsers prefer (``ünï 肺.png`` comes back as itself, not ``_n_.png``)."""
    ascii_name = f"{_safe_stem(upload_name)}_{suffix}.png"
    stem = (Path(upload_name or "image").stem or "image")[:100]
    if f"{stem}_{suffix}.png" == ascii_name:
        return f'inline; filename="{ascii_name}"'
    encoded = urllib.parse.quote(f"{stem}_{suffix}.png", safe="")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"


def _display_name(filename: str | None) -> str:
    name = Path(filename).name if filename else ""
    return (name or "the upload")[:200]


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


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with a 413.

    A declared ``Content-Length`` over the limit is refused before anything is read;
    a body without one (chunked) is counted as it arrives, and reading past the limit
    raises :class:`BodyTooLarge` in whoever reads it.
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
        started = False

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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
) -> FastAPI:
    """The FastAPI application serving one run (loaded here, once).

    Args:
        run_dir: The run folder written by ``unet train``.
        settings: Workers, queue, limits and default prediction options.
        model: A model to use instead of ``RUN/model.keras`` (tests).
        warm_up: Predict one blank image before serving.

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
    few idle connections cannot turn every other request away with a 503.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(
            415,
            f"expected a multipart/form-data upload with the image in the field "
            f"'{UPLOAD_FIELD}' (curl -F {UPLOAD_FIELD}=@scan.png ...), "
            f"got {content_type or 'no content type'}",
        )
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
        app = create_app(run_dir, settings)
        bound = sock.getsockname()[1]
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
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(
                f"note: listening on {host}: anyone who can reach this address can use the "
                "service (there is no authentication)"
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
    "create_app",
    "listen",
    "serve_run",
]
