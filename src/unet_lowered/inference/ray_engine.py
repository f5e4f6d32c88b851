"""``unet predict --engine ray``: the same predictions on a Ray cluster (Ray Data actors).

The driver (the ``unet predict`` process) does what the local engine does before and
after predicting: it expands the inputs, checks the run and the output folder, opens
the journal (:mod:`unet_lowered.inference.journal`; with ``--resume`` the inputs
already finished are skipped), and at the end writes ``predictions.csv`` in input
order. The inputs left to do become a Ray Dataset with one row per batch (the local
engine's batches, so the network sees the same images together), and
``Dataset.map_batches`` sends the rows to a fixed pool of actors
(:class:`ray.data.ActorPoolStrategy`), each of which loads the run once. An actor reads
its batch, predicts it and writes the outputs itself, atomically, with the local
engine's own functions (so the files are byte for byte the same); it sends back only
the CSV rows, which the driver records in the journal as they arrive.

Faults: Ray Data restarts an actor that dies (``max_restarts=-1``) and retries its
batch on the pool (:data:`TASK_RETRIES` times); a batch whose actor keeps dying gets a
``failed`` row per input (rerun with ``--resume`` to retry them) while the rest of the
run goes on. A killed driver leaves complete files and the journal, as the local
engine does; ``--resume`` (with either engine) finishes the run.

Ray is an optional dependency (``pip install 'unet-lowered[distributed]'``), imported
only here, when the engine is used. Every node must see the run folder, the inputs and
the output folder under the same paths (a shared file system), and have this package
installed in the same Python environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_lowered.errors import UnetError
from unet_lowered.inference.batch import (
    PredictReport,
    _chunks,
    _fail,
    _note,
    _write_outputs,
    open_job,
)
from unet_lowered.inference.journal import Journal
from unet_lowered.inference.polarity import look_notes, predict_seen
from unet_lowered.inference.predictor import PredictOptions
from unet_lowered.io import images
from unet_lowered.io.progress import progress_bar, stderr_console
from unet_lowered.io.runs import load_run

INSTALL_HINT = "pip install 'unet-lowered[distributed]'"
TASK_RETRIES = 3
"""How many times a batch is retried on a restarted actor after its actor died."""
_RAY_LOGGERS = ("ray", "ray.data")


def predict_files_ray(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: PredictOptions | None = None,
    *,
    recursive: bool = False,
    save_prob: str | None = None,
    save_overlay: bool = False,
    progress: bool = True,
    resume: bool = False,
    address: str | None = None,
    actors: int | None = None,
    batch_hook: Callable[[int], None] | None = None,
    task_retries: int = TASK_RETRIES,
) -> PredictReport:
    """:func:`unet_lowered.inference.batch.predict_files` on Ray: the same files, the same CSV.

    Args:
        run_dir: The run folder written by ``unet train``.
        inputs: Image files, folders or glob patterns.
        out_dir: The output folder (created; must not be an input folder).
        options: Prediction and post-processing settings.
        recursive: Walk folders (and ``**`` in globs) recursively.
        save_prob: Also save probabilities: ``"png"``, ``"npy"`` or None.
        save_overlay: Also save ``<id>_overlay.png``.
        progress: Show a progress bar (on stderr).
        resume: Finish the interrupted run in ``out_dir`` (by either engine) instead of
            starting over: inputs whose files are all there are skipped.
        address: The Ray cluster: ``"auto"`` (the one ``ray start`` runs on this
            machine), ``"HOST:PORT"`` of its head node, or None to start a local Ray
            instance for this call (listening on 127.0.0.1 only). When this process is
            already connected to Ray (``ray.init``), that connection is used.
        actors: How many actors predict at once, each reserving one CPU [default: one
            per node of the cluster]; never more than there are batches.
        batch_hook: Called in the actor with the batch number after that batch's files
            are written, before its rows are sent back (for fault-injection tests).
        task_retries: How many times a batch is retried after its actor died.

    Returns:
        A :class:`unet_lowered.inference.batch.PredictReport`, as the local engine's.

    Raises:
        UnetError: As the local engine, and when Ray is not installed, cannot be
            reached at ``address``, or fails.
    """
    _check_ray_installed()
    if actors is not None and actors < 1:
        raise UnetError(f"--actors {actors}: give at least 1 actor")
    if address is not None:  # before the job writes its journal into --out
        _check_reachable(address)
    with contextlib.ExitStack() as session:
        # A cluster named by --ray-address is joined before the job writes anything into
        # --out: "auto" with no cluster running is refused with an empty --out (it left
        # a header-only predictions.csv and a journal). A local instance starts only when
        # there is work for it.
        ray = None if address is None else session.enter_context(_ray_session(address))
        job = open_job(
            run_dir, inputs, out_dir, options, recursive, save_prob, save_overlay, resume
        )
        report, rows, journal = job.report, job.rows, job.journal
        batches: list[list[tuple[int, str, str]]] = []
        for chunk in _chunks(list(enumerate(zip(job.ids, job.files, strict=True))), job.per_call):
            todo = []
            for k, (image_id, path) in chunk:
                done = journal.done.get(image_id)
                if (
                    done is not None
                    and done["source"] == str(path)
                    and done["status"] == "ok"
                    and all((job.out_dir / n).is_file() for n in job.outputs[image_id])
                ):
                    rows.append(done)  # finished before the interruption
                    report.written.append(image_id)
                else:
                    todo.append((k, image_id, str(path)))
            if todo:
                batches.append(todo)
        settings = {
            "run_dir": str(job.run.dir),
            "out_dir": str(job.out_dir),
            "options": job.options,
            "save_prob": job.save_prob,
            "save_overlay": save_overlay,
            "cwd": os.getcwd(),
            "hook": batch_hook,
        }
        console = stderr_console()
        with (
            job.finishing(),
            progress_bar(len(job.files), progress, "predicting", console) as advance,
        ):
            for _ in rows:
                advance()
            if batches:
                if ray is None:
                    ray = session.enter_context(_ray_session(None))
                returned = set()
                for result in _run_batches(ray, batches, settings, actors, task_retries):
                    returned.add(result["batch"])
                    _take(result, report, rows, console, journal)
                    advance()
                for b, batch in enumerate(batches):
                    if b not in returned:  # its actor kept dying: one failed row each
                        for _k, image_id, path in batch:
                            died = UnetError(
                                f"{path}: the Ray actor predicting it died "
                                f"{task_retries + 1} time(s); run again with --resume "
                                "to retry it"
                            )
                            _fail(report, rows, console, image_id, Path(path), died)
                            journal.append(rows[-1])
                            advance()
        order = job.order
        report.written.sort(key=lambda i: order[i])
        return report


# ---------------------------------------------------------------- the driver side


def _check_ray_installed() -> None:
    """Refuse early when Ray is missing, without importing it (see :func:`_ray_session`)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UnetError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}")


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Import Ray and connect to (or start) it for one call, quietly; yield the module.

    Ray started here is shut down at the end; a connection this process already had is
    used and left open.
    """
    local = address is None
    env = {"RAY_BACKEND_LOG_LEVEL": "fatal"}  # Ray's C++ warnings on stderr
    if local:  # read when ray is imported: a local instance listens on 127.0.0.1 only
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    quiet = {name: logging.getLogger(name).level for name in _RAY_LOGGERS}
    started = False
    try:
        with _environ(env), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import ray
                import ray.data
            except ImportError as e:
                raise UnetError(
                    f"--engine ray needs Ray Data, which cannot be imported ({e}): {INSTALL_HINT}"
                ) from None
            for name in quiet:  # the user sees our progress bar, not Ray's log lines
                logging.getLogger(name).setLevel(logging.CRITICAL)
            if not local:
                _check_reachable(address)
            if not ray.is_initialized():
                kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.CRITICAL}
                if local:
                    kwargs["include_dashboard"] = False
                try:
                    with _fd2_to_devnull():  # the C++ start-up lines of the driver
                        ray.init(address="local" if local else address, **kwargs)
                except Exception as e:
                    where = "start a local Ray instance" if local else f"connect to {address}"
                    hint = (
                        "check that Ray is installed the same way everywhere"
                        if local
                        else "start it with `ray start --head` (then use --ray-address auto) "
                        "or leave --ray-address out to start a local instance"
                    )
                    raise UnetError(
                        f"--ray-address: cannot {where} ({_first_line(e)}); {hint}"
                    ) from None
                started = True
        with _no_raylet_prints(ray):
            yield ray
    finally:
        if started:
            ray.shutdown()
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _no_raylet_prints(ray: Any) -> Iterator[None]:
    """Keep the messages the raylet sends a driver (a worker died, a task is retried) off
    stdout: this engine handles those faults and reports what they cost in the table.

    Ray prints them from a thread of the driver with ``ray._private.worker.print_to_stdstream``
    whatever ``log_to_driver`` says; a Ray without that function is left as it is.
    """
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def quiet(data: dict, *args: Any, **kwargs: Any) -> None:
        if data.get("pid") != "raylet":
            original(data, *args, **kwargs)

    worker.print_to_stdstream = quiet
    try:
        yield
    finally:
        worker.print_to_stdstream = original


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``HOST:PORT`` nothing listens on (Ray itself would retry for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise UnetError(
            f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the "
            "head node with `ray start --head` and give its address, or use --ray-address "
            "auto on a node of the cluster"
        ) from None


@contextlib.contextmanager
def _fd2_to_devnull() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (Python's errors still come back as exceptions)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables not already set (the user's settings win), then restore."""
    added = [k for k in values if k not in os.environ]
    for k in added:
        os.environ[k] = values[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _run_batches(
    ray: Any,
    batches: list[list[tuple[int, str, str]]],
    settings: dict[str, Any],
    actors: int | None,
    task_retries: int,
) -> Iterator[dict[str, Any]]:
    """Predict ``batches`` on a pool of actors; yield one result per input as they come."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.max_errored_blocks = -1  # a batch whose actor keeps dying: failed rows, go on
    if actors is None:
        actors = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    actors = min(actors, len(batches))
    items = [{"batch": b, "inputs": json.dumps(batch)} for b, batch in enumerate(batches)]
    try:
        with warnings.catch_warnings():
            # max_task_retries is passed as a Ray remote argument (deprecated, still honoured)
            warnings.simplefilter("ignore")
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _BatchPredictor,
                batch_size=1,  # one row = one batch of the local engine
                batch_format="numpy",
                # one batch at a time per actor: an actor's death costs only its own batch
                compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                num_cpus=1,
                fn_constructor_kwargs={"settings": settings},
                max_restarts=-1,
                max_task_retries=task_retries,
            )
            for result in dataset.iter_rows():
                result = {
                    k: v.item() if isinstance(v, np.generic) else v for k, v in result.items()
                }
                if result["fatal"]:
                    raise UnetError(result["fatal"])
                yield result
    except UnetError:
        raise
    except Exception as e:  # Ray's errors: an actor's own one-line error if it had one
        cause = _unet_error_in(e)
        if cause is not None:
            raise UnetError(cause) from None
        raise UnetError(f"--engine ray: the Ray job failed ({_first_line(e)})") from None


def _unet_error_in(error: BaseException) -> str | None:
    """The message of a :class:`UnetError` behind a Ray error (an actor that could not load
    the run, say), or None. Ray keeps the original as ``cause``; its wrappers subclass the
    original's class, so the message is taken from an exception that is nothing else."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UnetError) and type(e).__module__.startswith("unet_lowered"):
            return str(e)
        todo.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
    return None


def _take(
    result: dict[str, Any],
    report: PredictReport,
    rows: list[dict[str, Any]],
    console: Any,
    journal: Journal,
) -> None:
    """Record one actor result as the local engine records an input."""
    row = json.loads(result["row"])
    _note(report, console, json.loads(result["notes"]))
    if result["failed"]:
        _fail(report, rows, console, row["id"], Path(row["source"]), UnetError(result["failed"]))
    else:
        rows.append(row)
        report.written.append(row["id"])
    journal.append(rows[-1])


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# ---------------------------------------------------------------- the actor side


class _Quiet:
    """A console for :func:`_fail` in an actor: the driver prints the message."""

    def print(self, *args: Any, **kwargs: Any) -> None:
        pass


class _BatchPredictor:
    """A Ray Data actor: loads the run once, then predicts and writes whole batches.

    Each input row is one batch (``inputs``: JSON of ``[index, id, path]`` triples);
    it returns one row per input: ``batch``, ``index``, ``row`` (the CSV row as JSON),
    ``notes`` (JSON list), ``failed`` (the message, or ``""``) and ``fatal`` (a message
    that must stop the run, such as a full disk, or ``""``).
    """

    def __init__(self, settings: dict[str, Any]):
        with contextlib.suppress(OSError):
            os.chdir(settings["cwd"])  # relative inputs mean what they mean to the driver
        self.settings = settings
        run = load_run(settings["run_dir"])
        self.model, self.config = run.model(), run.config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("batch", "index", "row", "notes", "failed")}
        out["fatal"] = []
        for number, text in zip(batch["batch"], batch["inputs"], strict=True):
            items = json.loads(str(text))
            try:
                results = self._predict(int(number), items)
            except Exception as e:  # a failure that is not the input's: stop the run
                fatal = (
                    str(e)
                    if isinstance(e, UnetError)
                    else f"--engine ray: predicting {items[0][2]} failed ({_first_line(e)})"
                )
                results = [_result(int(number), items[0][0], {"id": items[0][1]}, [], "", fatal)]
            for result in results:
                for k, v in result.items():
                    out[k].append(v)
        return out

    def _predict(self, number: int, items: list) -> list[dict[str, Any]]:
        s = self.settings
        out_dir, options = Path(s["out_dir"]), s["options"]
        started = time.perf_counter()
        results, loaded = [], []
        for index, image_id, source in items:
            path = Path(source)
            notes: list[str] = []
            try:
                image = images.read_image(path, options.max_pixels, notes)
            except (UnetError, OSError, cv2.error) as e:
                rows: list[dict[str, Any]] = []
                report = PredictReport(out_dir)
                _fail(report, rows, _Quiet(), image_id, path, e)
                results.append(_result(number, index, rows[-1], notes, report.failed[0][1]))
                continue
            loaded.append((index, image_id, path, image, notes))
        if loaded:
            seen = predict_seen(self.model, [x[3] for x in loaded], self.config, options)
            seconds = (time.perf_counter() - started) / len(loaded)
            for (index, image_id, path, image, notes), p in zip(loaded, seen, strict=True):
                t0 = time.perf_counter()
                notes += look_notes(str(path), p.look, options.polarity)
                try:
                    row = _write_outputs(
                        out_dir,
                        image_id,
                        path,
                        image,
                        p.probs,
                        self.config,
                        options,
                        s["save_prob"],
                        s["save_overlay"],
                        p.field,
                        p.grid,
                        p.look,
                    )
                except OSError as e:
                    fatal = (
                        f"{out_dir}: cannot write the outputs of {path} ({e.strerror or e}); "
                        "free disk space or choose another --out, then run again with --resume"
                    )
                    return [_result(number, index, {"id": image_id}, [], "", fatal)]
                row["seconds"] = round(seconds + time.perf_counter() - t0, 4)
                results.append(_result(number, index, row, notes))
        if s["hook"] is not None:
            s["hook"](number)
        return results


def _result(
    number: int,
    index: int,
    row: dict[str, Any],
    notes: list[str],
    failed: str = "",
    fatal: str = "",
) -> dict[str, Any]:
    return {
        "batch": number,
        "index": index,
        "row": json.dumps(row),
        "notes": json.dumps(notes),
        "failed": failed,
        "fatal": fatal,
    }
