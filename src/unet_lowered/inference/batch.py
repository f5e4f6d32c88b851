"""``unet predict``: masks for files, folders and globs, written atomically.

:func:`predict_files` expands the inputs (:func:`collect_inputs`), gives each a
unique output id (:func:`make_ids`), and streams them one batch at a time through
three threads (:func:`run_pipeline`): a reader decodes and preprocesses the next
batches (:func:`unet_lowered.io.images.read_image`,
:func:`unet_lowered.inference.predictor.prepare_images`), the calling thread runs
the network (:func:`unet_lowered.inference.predictor.predict_prepared`), and a
writer post-processes and writes the mask and, when asked, probabilities and an
overlay, then one row of ``predictions.csv``, in input order. The results are those
of :func:`unet_lowered.inference.predictor.predict_images` image by image. It never
writes into the input folders, and reports unreadable files without stopping
(:func:`exit_status` decides the exit status).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import glob
import io
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_lowered import options as names
from unet_lowered.errors import MissingExtraError, UnetError, one_line
from unet_lowered.inference.journal import JOURNAL_FILE, Journal, remove_stale_temps
from unet_lowered.inference.overlay import overlay
from unet_lowered.inference.polarity import (
    AS_STORED,
    INVERTED,
    Look,
    look_notes,
    quality_as_read,
    second_look,
)
from unet_lowered.inference.postprocess import count_components
from unet_lowered.inference.predictor import (
    PredictOptions,
    for_run,
    mask_to_png,
    predict_prepared,
    prepare_images,
    probs_to_mask,
    restore_size,
)
from unet_lowered.inference.quality import Objects, contrast_grid, imaged_field, mask_quality
from unet_lowered.io import atomic, images
from unet_lowered.io.progress import progress_bar, stderr_console
from unet_lowered.io.runs import CONFIG_FILE, LAST_FILE, MODEL_FILE, load_run
from unet_lowered.training.config import RunConfig

CSV_FILE = "predictions.csv"
CSV_COLUMNS = (
    "id",
    "source",
    "width",
    "height",
    "foreground_fraction",
    "components",
    "quality",
    "gray_scale",
    "orientation",
    "seconds",
    "status",
)

# ---------------------------------------------------------------- files


@dataclass
class PredictReport:
    """What :func:`predict_files` did.

    Attributes:
        out_dir: The output folder.
        written: Ids whose outputs were written.
        failed: ``(source path, message)`` for each input that could not be read or predicted.
        csv_path: ``predictions.csv``.
        notes: One line per thing worth telling about an input that was read (the first
            of several frames used, an EXIF orientation applied, ...).
    """

    out_dir: Path
    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    csv_path: Path | None = None
    notes: list[str] = field(default_factory=list)


def collect_inputs(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted list of distinct files.

    Files named explicitly are taken whatever their suffix (the content decides);
    files found in folders or by globs are taken when their content is an image
    (:func:`unet_lowered.io.images.is_image_file`, e.g. a DICOM without a suffix) or
    their name has an image suffix (:data:`unet_lowered.io.images.IMAGE_SUFFIXES`; a
    corrupt ``scan.png`` is then reported when read, not skipped unseen). Folders are
    walked recursively only with ``recursive``.

    Raises:
        UnetError: An input matches nothing, or no image is found at all.
    """
    found: dict[Path, None] = {}
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            files = images.iter_files(path, recursive=recursive)
            picked = [f for f in files if _is_input(f)]
            if not picked:
                hint = "" if recursive else " (use --recursive to look in sub-folders)"
                if not recursive and any(f.name.upper() == "DICOMDIR" for f in files):
                    hint = " but a DICOMDIR; its images are in the sub-folders: use --recursive"
                raise UnetError(f"{path}: no image files in this folder{hint}")
            found.update(dict.fromkeys(picked))
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=recursive))
            picked = [m for m in matches if m.is_file() and _is_input(m)]
            if not picked:
                raise UnetError(f"{raw}: the pattern matches no image files")
            found.update(dict.fromkeys(picked))
        else:
            raise UnetError(f"{raw}: no such file or folder; check the path")
    unique: dict[Path, Path] = {}
    for p in found:  # one file under two names: its own name, not a link's, names outputs
        kept = unique.setdefault(p.resolve(), p)
        if kept.is_symlink() and not p.is_symlink():
            unique[p.resolve()] = p
    if not unique:
        raise UnetError("no input images given")
    return sorted(unique.values())


def _is_input(path: Path) -> bool:
    """An image found in a folder or by a glob; a DICOMDIR (an export's index) is not."""
    if path.name.upper() == "DICOMDIR":
        return False
    return path.suffix.lower() in images.IMAGE_SUFFIXES or images.is_image_file(path)


def make_ids(files: Sequence[Path]) -> list[str]:
    """Output ids for input files: the file stem, made unique where stems collide.

    Files with the same stem from different folders get as many parent folder names as
    needed to tell them apart, joined by ``__`` (``a/x.png`` and ``b/x.png`` become
    ``a__x`` and ``b__x``); the same stem in one folder keeps the suffix (``x_png``,
    ``x_jpg``; with folder names too when the stem also comes from another folder:
    ``a/x.png``, ``a/x.jpg`` and ``b/x.png`` become ``a__x_png``, ``a__x_jpg`` and
    ``b__x``). Ids never repeat; :func:`_check_output_names` refuses the rare input
    whose outputs would still take another's file names (``a.png`` and ``a_prob.png``
    with ``--save-prob png``).
    """
    stems = Counter(p.stem for p in files)
    ids = [p.stem for p in files]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(files):
        if stems[p.stem] > 1:
            groups.setdefault(p.stem, []).append(i)
    for stem, members in groups.items():
        parents = [Path(os.path.abspath(files[i])).parent.parts[1:] for i in members]
        shared = Counter(parents)  # files of this stem per folder
        keys = [  # the suffix kept where one folder holds the stem twice
            f"{stem}_{files[i].suffix.lstrip('.').lower() or 'file'}"
            if shared[parent] > 1
            else stem
            for i, parent in zip(members, parents, strict=True)
        ]
        if len(shared) == 1:  # all in one folder: the suffixes tell them apart
            names = keys
        else:
            depth = max(len(p) for p in parents)
            names = ["__".join([*parent, key]) for parent, key in zip(parents, keys, strict=True)]
            for k in range(1, depth + 1):
                candidate = [
                    "__".join([*parent[-k:], key])
                    for parent, key in zip(parents, keys, strict=True)
                ]
                if len(set(candidate)) == len(candidate):
                    names = candidate
                    break
        for i, name in zip(members, names, strict=True):
            ids[i] = name
    taken = set(ids)
    seen: set[str] = set()
    for i, name in enumerate(ids):  # a file literally named like a disambiguated id
        if name in seen:
            n = 2
            while f"{name}-{n}" in taken:  # nor like this renaming (``x-2.png``)
                n += 1
            ids[i] = f"{name}-{n}"
            taken.add(ids[i])
        seen.add(ids[i])
    return ids


def _check_out_dir(
    out_dir: Path, inputs: Sequence[str | os.PathLike], files: Sequence[Path]
) -> None:
    """Refuse an output folder that is a file (or lies under one), is an input folder,
    lies inside one, holds inputs, or is a run folder of ``unet train``."""
    atomic.refuse_a_file(out_dir)
    out = out_dir.resolve()
    folders = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    for folder in folders:
        if out == folder or folder in out.parents:
            raise UnetError(
                f"--out {out_dir} is inside the input folder {folder}; predictions are never "
                "written among the inputs: choose another output folder"
            )
    parents = {f.resolve().parent for f in files}
    if out in parents:
        raise UnetError(
            f"--out {out_dir} holds input images; predictions are never written beside the "
            "inputs: choose another output folder"
        )
    # A pattern (`"imgs/*.png"`, expanded here, not by the shell) names its folder as the
    # input: masks written under it would be read as images by `unet predict imgs -r`.
    for pattern in (str(p) for p in inputs if glob.has_magic(str(p))):
        parts = Path(pattern).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        folder = Path(*parts[:fixed]).resolve() if fixed else Path.cwd()
        if out == folder or folder in out.parents:
            raise UnetError(
                f"--out {out_dir} is inside {folder}, whose images {pattern} names; "
                "predictions are never written among the inputs: choose another output folder"
            )
    if (out / CONFIG_FILE).is_file() and any((out / m).is_file() for m in (MODEL_FILE, LAST_FILE)):
        raise UnetError(
            f"--out {out_dir} is a run folder of `unet train` (it holds {CONFIG_FILE} and "
            "the model); predictions are never written among a run's files: choose an empty "
            "or new output folder"
        )


_KINDS = {"mask": "", "probabilities": "--save-prob", "overlay": "--overlay"}
"""Each kind of output file and the option that writes it."""


def _output_kind(image_id: str, name: str) -> str:
    """Which of :func:`_output_names`'s files of ``image_id`` ``name`` is: a key of
    :data:`_KINDS`."""
    if name == f"{image_id}.png":
        return "mask"
    return "overlay" if name == f"{image_id}_overlay.png" else "probabilities"


def _check_output_names(
    out_dir: Path, files: Sequence[Path], ids: Sequence[str], outputs: dict[str, list[str]]
) -> None:
    """Refuse two inputs whose outputs would have the same file name (``a.png`` and
    ``a_prob.png`` with ``--save-prob png``: the mask of one would replace the other's
    probabilities), before anything is predicted."""
    owner: dict[str, int] = {}
    for k, image_id in enumerate(ids):
        for name in outputs[image_id]:
            first = owner.setdefault(name, k)
            if first == k:
                continue
            kinds = [_output_kind(ids[first], name), _output_kind(image_id, name)]
            drop = sorted({_KINDS[kind] for kind in kinds} - {""})
            fixes = "rename one of them or predict them into separate --out folders"
            if drop:
                fixes = (
                    "rename one of them, predict them into separate --out folders, or drop "
                    + " and ".join(drop)
                )
            raise UnetError(
                f"{files[first]} and {files[k]} would both write {out_dir / name} (the "
                f"{kinds[0]} of the first, the {kinds[1]} of the second); {fixes}"
            )


def _is_predict_output(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds what an earlier ``unet predict`` left: its progress
    journal (an interrupted run) or its ``predictions.csv`` (a finished one)."""
    if (out_dir / JOURNAL_FILE).is_file():
        return True
    try:
        with open(out_dir / CSV_FILE, encoding="utf-8", errors="replace") as f:
            header = f.readline(4096)
    except OSError:
        return False
    return header.startswith(",".join(CSV_COLUMNS[:2]) + ",")


def _check_no_foreign_files(out_dir: Path, names: Iterable[str]) -> None:
    """Refuse to overwrite files that ``unet predict`` did not write: when ``out_dir``
    already holds a file this run would write (``names``, or ``predictions.csv``) and is
    not an earlier ``unet predict``'s output folder (:func:`_is_predict_output`; starting
    over or ``--resume`` there is fine). Unrelated files with other names are left alone."""
    try:
        present = set(os.listdir(out_dir))
    except OSError:  # no folder yet (or not one: reported when it is created)
        return
    clashes = [n for n in dict.fromkeys([*names, CSV_FILE]) if n in present]
    if not clashes or _is_predict_output(out_dir):
        return
    more = f" (and {len(clashes) - 1} more of this run's output names)" if len(clashes) > 1 else ""
    raise UnetError(
        f"{out_dir / clashes[0]}: already exists{more} and was not written by `unet predict`; "
        "predictions never overwrite other files: choose an empty or new --out folder"
    )


def predict_files(
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
    pipeline: bool = True,
) -> PredictReport:
    """Predict masks for image files with a trained run: ``unet predict``.

    For each input image it writes, into ``out_dir``: ``<id>.png`` (the mask at the
    original size; 0/255, or the label values for multi-class runs), optionally
    ``<id>_prob.png`` (8-bit probability; ``<id>_prob_<k>.png`` per class ``k >= 1``
    for multi-class runs) or ``<id>_prob.npy`` (float32 ``(H, W)`` or ``(H, W, K)``),
    optionally ``<id>_overlay.png``, and at the end ``predictions.csv`` (one row per
    input, in input order, failed ones included with their error in ``status``). Files
    are written atomically. Images stream through three threads, one batch at a time
    and in input order (:func:`run_pipeline`): the next batches are decoded and
    preprocessed while the network runs on the calling thread, and the finished ones
    post-processed, encoded and written meanwhile; at most two batches wait between
    two steps, so memory stays bounded however many inputs there are. The images of
    a batch are decoded, and written, side by side on worker threads (one per CPU, at
    most one per image of the batch), and recorded in input order.
    Each finished input is recorded in a journal (:mod:`unet_lowered.inference.journal`),
    so a run killed at any moment is finished by the same call with ``resume=True``:
    inputs whose files are all there are skipped, the others predicted, and
    ``predictions.csv`` lists each input once, as an uninterrupted run would.

    Args:
        run_dir: The run folder written by ``unet train``.
        inputs: Image files, folders or glob patterns.
        out_dir: The output folder (created; must not be an input folder or a run
            folder). Files there with the names of this call's outputs are replaced
            only when an earlier ``unet predict`` left them (its ``predictions.csv``
            or journal is there); unrelated files are left alone. A run that starts
            over there removes the earlier run's ``predictions.csv`` once its journal
            exists, before it replaces any file, so a run killed midway never leaves
            the old table beside a mix of old and new masks.
        options: Prediction and post-processing settings.
        recursive: Walk folders (and ``**`` in globs) recursively.
        save_prob: Also save probabilities: ``"png"``, ``"npy"`` or None.
        save_overlay: Also save ``<id>_overlay.png``.
        progress: Show a progress bar (on stderr).
        resume: Finish the interrupted run in ``out_dir`` (same settings and the same
            list of inputs; their contents are assumed unchanged) instead of starting
            over.
        pipeline: Read, predict and write on three threads and the workers
            (:func:`run_pipeline`); False runs the same steps one after another on
            the calling thread (the outputs are the same byte for byte; for
            comparisons and debugging).

    Returns:
        A :class:`PredictReport`. Unreadable or corrupt inputs are listed in
        ``failed`` (and reported on stderr as they happen) while the others are still
        processed; the caller decides the exit status. Notes (only the first frame of
        an animation read, an EXIF orientation applied, ...) are printed and listed in
        ``notes``.

    Raises:
        UnetError: Bad options, inputs that match nothing, a bad run folder, an output
            folder among the inputs or a run folder, one that cannot be written
            (read-only, disk full), two inputs whose outputs would have the same name,
            an output folder holding a file of that name that no ``unet predict`` wrote,
            or ``resume`` with other settings or other inputs than the interrupted
            run's (its journal is then kept).
    """
    job = open_job(run_dir, inputs, out_dir, options, recursive, save_prob, save_overlay, resume)
    console = stderr_console()
    with (
        job.finishing(),
        progress_bar(len(job.files), progress, "predicting", console) as advance,
        _workers(pipeline, job.per_call) as workers,
    ):
        stages = _Stages(
            model=job.model,
            config=job.run.config,
            options=job.options,
            out_dir=job.out_dir,
            outputs=job.outputs,
            journal=job.journal,
            report=job.report,
            rows=job.rows,
            console=console,
            advance=advance,
            save_prob=job.save_prob,
            save_overlay=save_overlay,
            workers=workers,
        )
        chunks = _chunks(list(zip(job.ids, job.files, strict=True)), job.per_call)
        run_pipeline(chunks, stages.read, stages.predict, stages.write, threaded=pipeline)
    return job.report


@dataclass
class Job:
    """One ``unet predict`` call set up, the same for both engines (this module's and
    :mod:`unet_lowered.inference.ray_engine`): the inputs and their ids, the run and its
    model, the resolved options, each input's output names, the journal, and the rows
    and report being filled."""

    files: list[Path]
    ids: list[str]
    out_dir: Path
    run: Any
    model: Any
    options: PredictOptions
    save_prob: str | None
    outputs: dict[str, list[str]]
    journal: Journal
    report: PredictReport
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def order(self) -> dict[str, int]:
        """Each id's position among the inputs."""
        return {image_id: k for k, image_id in enumerate(self.ids)}

    @property
    def per_call(self) -> int:
        """Images per network call: a batch in resize mode; one in tile mode (which
        batches tiles instead)."""
        return self.options.batch_size if self.options.mode == "resize" else 1

    @contextlib.contextmanager
    def finishing(self) -> Iterator[None]:
        """Around the predicting: afterwards ``predictions.csv`` is written (rows in input
        order), also when predicting stopped with an error, and the journal closed; it is
        finished (removed) only after a completed run, so ``--resume`` can go on after any
        other."""
        completed = interrupted = False
        try:
            yield
            completed = True
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            order = self.order
            self.rows.sort(key=lambda r: order[r["id"]])
            try:
                self.report.csv_path = _write_csv(self.out_dir / CSV_FILE, self.rows)
            except (OSError, atomic.UnwritableError) as e:  # atomic writes raise the latter
                self.journal.close()
                if completed:  # else the error that stopped the run is the one to report
                    raise UnetError(
                        f"{self.out_dir / CSV_FILE}: cannot be written ({_reason(e)}); "
                        "free disk space, then run again with --resume"
                    ) from None
            else:
                if completed:
                    self.journal.finish()
                else:
                    self.journal.close()
                    if interrupted:
                        self._tell_interrupted()

    def _tell_interrupted(self) -> None:
        """One line on stderr after Ctrl-C: how far the run got, and how to finish it."""
        done, total = len(self.rows), len(self.files)
        table = one_line(str(self.out_dir / CSV_FILE))
        print(
            f"stopped: {done} of {total} inputs done (listed in {table}); the same command "
            "with --resume finishes the job",
            file=sys.stderr,
            flush=True,
        )


def open_job(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: PredictOptions | None,
    recursive: bool,
    save_prob: str | None,
    save_overlay: bool,
    resume: bool,
) -> Job:
    """Check the options and inputs, load the run and its model, create the output
    folder (stale temporary files removed) and open the journal: see
    :func:`predict_files` for the arguments and the errors raised."""
    options = (options or PredictOptions()).validate()
    if save_prob is not None:
        save_prob = names.choose(save_prob, names.PROB_FORMATS, "save-prob")
    files = collect_inputs(inputs, recursive)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, inputs, files)
    ids = make_ids(files)
    run = load_run(run_dir)
    config = run.config
    outputs = {i: _output_names(i, config, save_prob, save_overlay) for i in ids}
    _check_output_names(out_dir, files, ids, outputs)
    _check_no_foreign_files(out_dir, (n for names_ in outputs.values() for n in names_))
    options = for_run(options, config)
    model = run.model()
    atomic.make_out_folder(out_dir)
    remove_stale_temps(out_dir, [CSV_FILE, *(n for names_ in outputs.values() for n in names_)])
    journal = Journal.open(
        out_dir,
        _journal_settings(run, options, save_prob, save_overlay),
        CSV_COLUMNS,
        resume,
        inputs=[str(f.resolve()) for f in files],
    )
    if not journal.resumed:
        _retire_table(out_dir, journal)
    return Job(
        files,
        ids,
        out_dir,
        run,
        model,
        options,
        save_prob,
        outputs,
        journal,
        PredictReport(out_dir),
    )


def _retire_table(out_dir: Path, journal: Journal) -> None:
    """Remove an earlier run's ``predictions.csv`` when a run starts over in ``out_dir``.

    Called once the new journal is on the disk and before any file is replaced: a
    fresh run killed midway (even ``kill -9``) must not leave the old, complete-looking
    table beside a mix of old and new masks. The journal now marks the folder as
    ``unet predict``'s (:func:`_is_predict_output`), for ``--resume`` and for the next
    run's check; the table is written again when the run ends.
    """
    try:
        (out_dir / CSV_FILE).unlink(missing_ok=True)
    except OSError as e:
        journal.close()
        raise UnetError(
            f"{out_dir / CSV_FILE}: the earlier run's table cannot be removed "
            f"({e.strerror or e}); remove it, or choose another --out folder"
        ) from None


# ---------------------------------------------------------------- the pipeline


@dataclass
class _Item:
    """One input on its way from :meth:`_Stages.read` to :meth:`_Stages.write`."""

    image_id: str
    path: Path
    done: dict[str, Any] | None = None  # its journal row: finished before the interruption
    error: Exception | None = None  # why it could not be read
    notes: list[str] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)  # the image's (H, W)
    image: np.ndarray | None = None  # the decoded image, kept for the overlay only
    x: np.ndarray | None = None  # the network input (preprocess.model_input)
    probs: np.ndarray | None = None  # the network's probabilities, at the input's size
    field_share: float = 1.0  # the image's quality.imaged_field, for the quality flag
    grid: np.ndarray | None = None  # its quality.contrast_grid (<= 256 px), for the flag
    look: Look | None = None  # polarity.second_look's decision (and its flag, if judged)
    seconds: float = 0.0


@dataclass
class _Stages:
    """The three steps of :func:`predict_files` for one batch of ``(id, path)`` pairs."""

    model: Any
    config: RunConfig
    options: PredictOptions
    out_dir: Path
    outputs: dict[str, list[str]]
    journal: Journal
    report: PredictReport
    rows: list[dict[str, Any]]
    console: Any
    advance: Any
    save_prob: str | None
    save_overlay: bool

    workers: ThreadPoolExecutor | None = None  # decodes and writes several images at once

    def read(self, chunk: list[tuple[str, Path]]) -> list[_Item]:
        """Decode and preprocess (reader thread; the images on the workers, if any);
        finished and unreadable inputs marked."""
        if self.workers is None:
            return [self._read_one(pair) for pair in chunk]
        return list(self.workers.map(self._read_one, chunk))

    def _read_one(self, pair: tuple[str, Path]) -> _Item:
        image_id, path = pair
        item = _Item(image_id, path)
        done = self.journal.done.get(image_id)
        if (
            done is not None
            and done["source"] == str(path)
            and done["status"] == "ok"
            and all((self.out_dir / n).is_file() for n in self.outputs[image_id])
        ):
            item.done = done
            return item
        started = time.perf_counter()
        try:
            image = images.read_image(path, self.options.max_pixels, item.notes)
        except MissingExtraError:  # not this file's fault: stop, do not skip them all
            raise
        except (UnetError, OSError, cv2.error) as e:
            item.error = e
            return item
        item.shape = image.shape[:2]
        item.field_share = imaged_field(image)
        item.grid = contrast_grid(image)
        item.x = prepare_images([image], self.config, self.options)[0]
        item.image = image if self.save_overlay else None
        item.seconds = time.perf_counter() - started
        return item

    def predict(self, items: list[_Item]) -> list[_Item]:
        """The network on the batch's readable images, then a second look at the
        flagged ones with their gray scale inverted (calling thread; see
        :func:`~unet_lowered.inference.polarity.second_look`)."""
        todo = [item for item in items if item.x is not None]
        if todo:
            started = time.perf_counter()
            inputs = [i.x for i in todo]
            part = getattr(self.advance, "part", None)  # a huge image's tiles: a line of theirs
            on_tiles = None if part is None else part(f"tiles of {one_line(todo[0].path.name)}")
            probs = predict_prepared(self.model, inputs, self.config, self.options, on_tiles)
            looks = second_look(
                self.model,
                inputs,
                probs,
                [i.shape for i in todo],
                [i.field_share for i in todo],
                [i.grid for i in todo],
                self.config,
                self.options,
            )
            share = (time.perf_counter() - started) / len(todo)
            for item, p, look in zip(todo, probs, looks, strict=True):
                item.probs, item.x, item.look = p, None, look
                item.seconds += share
                item.notes += look_notes(str(item.path), look, self.options.polarity)
        return items

    def write(self, items: list[_Item], stop: threading.Event) -> None:
        """Outputs, CSV row and journal line of each item, in order (writer thread).

        With workers the images' outputs are made and written on them, several at once,
        while this thread records the rows and journal lines in input order. When
        ``stop`` is set, the images not started are dropped and those being written
        finished (files are atomic; only recorded ones count as done for ``--resume``).
        """
        todo = [item for item in items if item.done is None and item.error is None]
        pending = (
            {}
            if self.workers is None
            else {id(item): self.workers.submit(self._outputs, item) for item in todo}
        )
        try:
            for item in items:
                if stop.is_set():
                    return
                if item.done is not None:
                    self.rows.append(item.done)
                    self.report.written.append(item.image_id)
                elif item.error is not None:
                    _fail(
                        self.report, self.rows, self.console, item.image_id, item.path, item.error
                    )
                    self.journal.append(self.rows[-1])
                else:
                    _note(self.report, self.console, item.notes)
                    future = pending.get(id(item))
                    row = self._outputs(item) if future is None else future.result()
                    self.rows.append(row)
                    self.journal.append(row)
                    self.report.written.append(item.image_id)
                self.advance()
        finally:
            for future in pending.values():
                future.cancel()
            concurrent.futures.wait(pending.values())

    def _outputs(self, item: _Item) -> dict[str, Any]:
        """Write one image's outputs; its CSV row."""
        started = time.perf_counter()
        probs = restore_size(item.probs, item.shape)
        try:
            row = _write_outputs(
                self.out_dir,
                item.image_id,
                item.path,
                item.image,
                probs,
                self.config,
                self.options,
                self.save_prob,
                self.save_overlay,
                item.field_share,
                item.grid,
                item.look,
            )
        except (OSError, atomic.UnwritableError) as e:  # atomic writes raise the latter
            raise UnetError(
                f"{self.out_dir}: cannot write the outputs of {item.path} "
                f"({_reason(e)}); free disk space or choose another "
                "--out, then run again with --resume"
            ) from None
        item.probs = item.image = item.grid = None
        row["seconds"] = round(item.seconds + time.perf_counter() - started, 4)
        return row


class _Stopped(Exception):
    """A pipeline thread gives up because another one failed."""


@dataclass
class _Raise:
    """An error of the reader, handed on in order so it surfaces where a loop would stop."""

    error: BaseException


_END = object()


def run_pipeline(
    chunks: Iterable[Any],
    read: Callable[[Any], Any],
    predict: Callable[[Any], Any],
    write: Callable[[Any, threading.Event], None],
    threaded: bool = True,
    ahead: int = 2,
) -> None:
    """``write(predict(read(chunk)), stop)`` for each chunk, in order, on three threads.

    ``read`` runs on a reader thread, ``predict`` on the calling thread (the network
    stays where Keras was loaded), ``write`` on a writer thread; bounded queues hold at
    most ``ahead`` chunks between two steps. Errors surface as in the plain loop
    (``threaded=False``): an exception of ``read`` or ``predict`` is raised once the
    chunks before it are written; one of ``write`` (a full disk, a KeyboardInterrupt) is
    raised at once. On KeyboardInterrupt (or any BaseException) of the caller the
    writer stops after the image it is writing (``stop`` is set) and both threads are
    joined before this returns, so the caller's journal and CSV see every finished image.
    """
    if not threaded:
        never = threading.Event()
        for chunk in chunks:
            write(predict(read(chunk)), never)
        return
    stop = threading.Event()
    to_predict: queue.Queue[Any] = queue.Queue(ahead)
    to_write: queue.Queue[Any] = queue.Queue(ahead)
    failed: list[BaseException] = []

    def put(q: queue.Queue[Any], item: Any) -> None:
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.05)
            except queue.Full:
                pass
        raise _Stopped

    def get(q: queue.Queue[Any]) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                pass
        raise _Stopped

    def reader() -> None:
        try:
            for chunk in chunks:
                put(to_predict, read(chunk))
            put(to_predict, _END)
        except _Stopped:
            pass
        except BaseException as e:  # raised by the caller where a plain loop would stop
            with contextlib.suppress(_Stopped):
                put(to_predict, _Raise(e))

    def writer() -> None:
        try:
            while (items := get(to_write)) is not _END:
                write(items, stop)
        except _Stopped:
            pass
        except BaseException as e:
            failed.append(e)
            stop.set()

    def finish_writing() -> None:
        with contextlib.suppress(_Stopped):
            put(to_write, _END)
        threads[1].join()
        if failed:
            raise failed[0]

    threads = [
        threading.Thread(target=reader, name="unet-predict-read", daemon=True),
        threading.Thread(target=writer, name="unet-predict-write", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        try:
            while (items := get(to_predict)) is not _END:
                if isinstance(items, _Raise):
                    raise items.error
                put(to_write, predict(items))
        except _Stopped:
            raise failed[0] from None
        except Exception:
            finish_writing()  # the chunks predicted before the error are written
            raise
        finish_writing()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _write_outputs(
    out_dir: Path,
    image_id: str,
    path: Path,
    image: np.ndarray | None,
    probs: np.ndarray,
    config: RunConfig,
    options: PredictOptions,
    save_prob: str | None,
    save_overlay: bool,
    field_share: float = 1.0,
    grid: np.ndarray | None = None,
    look: Look | None = None,
) -> dict[str, Any]:
    """Write the mask (and probability/overlay files) of one image; return its CSV row.

    ``probs`` are at the image's size; ``image`` is needed for the overlay only;
    ``field_share`` and ``grid`` are its
    :func:`~unet_lowered.inference.quality.imaged_field` and
    :func:`~unet_lowered.inference.quality.contrast_grid` (for the quality flag);
    ``look``: :func:`~unet_lowered.inference.polarity.second_look`'s decision. When
    it inverted or turned the image, the flag is taken as the network read it
    (:func:`~unet_lowered.inference.polarity.quality_as_read`); when it judged the mask
    at the image's size already, its mask and flag are taken (the same values).
    """
    inverted = look is not None and look.inverted
    judged = look is not None and look.mask is not None and look.mask.shape == probs.shape[:2]
    mask = look.mask if judged else probs_to_mask(probs, config, options)
    images.write_png(out_dir / f"{image_id}.png", mask_to_png(mask, config))
    if save_prob == "npy":
        arr = probs[:, :, 0] if probs.shape[2] == 1 else probs
        atomic.save_with(out_dir / f"{image_id}_prob.npy", lambda p: np.save(p, arr))
    elif save_prob == "png":
        as8 = np.clip(probs * 255 + 0.5, 0, 255).astype(np.uint8)
        if probs.shape[2] == 1:
            images.write_png(out_dir / f"{image_id}_prob.png", as8[:, :, 0])
        else:
            for k in range(1, probs.shape[2]):
                images.write_png(out_dir / f"{image_id}_prob_{k}.png", as8[:, :, k])
    if save_overlay:
        images.write_png(out_dir / f"{image_id}_overlay.png", overlay(image, mask))
    h, w = mask.shape
    if judged:
        found, flag = look.found, look.flag
    elif look is not None and look.turns:  # the flag as the network read the image
        found = None
        flag = quality_as_read(mask, probs, config, None, field_share, grid, look)
    else:
        if inverted and grid is not None:
            grid = -grid  # the image as the network read it
        found = Objects.of(mask) if mask.dtype == bool else None  # labelled once, used twice
        flag = mask_quality(mask, probs, config, found, field_share, grid)
    return {
        "id": image_id,
        "source": str(path),
        "width": w,
        "height": h,
        "foreground_fraction": round(float(np.count_nonzero(mask)) / mask.size, 6),
        "components": count_components(mask) if found is None else found.count,
        "quality": flag,
        "gray_scale": INVERTED if inverted else AS_STORED,
        "orientation": AS_STORED if look is None else look.orientation,
        "status": "ok",
    }


def _output_names(
    image_id: str, config: RunConfig, save_prob: str | None, save_overlay: bool
) -> list[str]:
    """The files :func:`_write_outputs` writes for ``image_id``."""
    names_ = [f"{image_id}.png"]
    if save_prob == "npy":
        names_.append(f"{image_id}_prob.npy")
    elif save_prob == "png":
        if config.num_classes == 1:
            names_.append(f"{image_id}_prob.png")
        else:
            names_.extend(f"{image_id}_prob_{k}.png" for k in range(1, config.num_classes))
    if save_overlay:
        names_.append(f"{image_id}_overlay.png")
    return names_


def _journal_settings(
    run: Any, options: PredictOptions, save_prob: str | None, save_overlay: bool
) -> dict[str, Any]:
    """What must not change between a killed run and its ``--resume``."""
    model = run.model_path.stat()
    return {
        "run": str(run.dir.resolve()),
        "model": [model.st_size, model.st_mtime_ns],
        "options": dataclasses.asdict(options),
        "save_prob": save_prob,
        "overlay": save_overlay,
    }


def _note(report: PredictReport, console: Any, notes: list[str]) -> None:
    from rich.markup import escape

    for note in notes:
        note = one_line(note)
        report.notes.append(note)
        console.print(f"[yellow]note[/yellow] {escape(note)}", soft_wrap=True)


def _fail(
    report: PredictReport,
    rows: list[dict[str, Any]],
    console: Any,
    image_id: str,
    path: Path,
    error: Exception,
) -> None:
    from rich.markup import escape

    message = one_line(
        str(error) if isinstance(error, UnetError) else f"{path}: {type(error).__name__}: {error}"
    )
    report.failed.append((str(path), message))
    rows.append({"id": image_id, "source": str(path), "status": f"failed: {message}"})
    console.print(f"[red]skipped[/red] {escape(message)}", soft_wrap=True)


def _reason(error: OSError | atomic.UnwritableError) -> str:
    """Why a write failed, in the system's words."""
    if isinstance(error, atomic.UnwritableError):
        return error.reason
    return error.strerror or str(error)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic.write_text(path, buf.getvalue())


@contextlib.contextmanager
def _workers(pipeline: bool, per_call: int) -> Iterator[ThreadPoolExecutor | None]:
    """The worker threads the pipeline's reader and writer share: one per CPU, at most
    one per image of a network call (``per_call``); None without a pipeline.

    Decoding, resizing, labelling and PNG encoding run in OpenCV and NumPy with the GIL
    released, so the images of a batch are read (and written) side by side, and the
    first and last batch of a folder, when only the reader or only the writer has work,
    take a fraction of the time. On the way out (an error, Ctrl-C) the images not
    started are dropped and those started finished.
    """
    if not pipeline:
        yield None
        return
    workers = max(1, min(os.cpu_count() or 1, per_call))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="unet-predict-work")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def exit_status(report: PredictReport, keep_going: bool) -> int:
    """The exit status of ``unet predict``.

    0 when every input was predicted. When some failed: 1, or 0 with ``keep_going``
    as long as at least one image was predicted (every input failing is always 1).
    """
    if not report.failed:
        return 0
    if keep_going and report.written:
        return 0
    return 1


__all__ = [
    "CSV_COLUMNS",
    "CSV_FILE",
    "PredictReport",
    "collect_inputs",
    "exit_status",
    "make_ids",
    "predict_files",
]
