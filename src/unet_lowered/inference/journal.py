"""What an interrupted ``unet predict`` had finished, so that ``--resume`` skips it.

``unet predict`` appends one row per input (a line of JSON: file names may hold line
breaks) to ``OUT/.predictions.journal`` as soon as that input's files are in place
(each written atomically), flushed to the disk.
A run killed at any moment (even ``kill -9``) leaves complete output files, a
journal whose last line may be cut off (it is ignored), and perhaps hidden temporary
files (removed by :func:`remove_stale_temps`). ``unet predict --resume`` with the same
settings reads the journal, keeps the rows of the inputs whose files are all there,
predicts the others, writes ``predictions.csv`` in input order (each input once) and
deletes the journal. Without ``--resume`` a run starts over.

The journal's first line records the settings (run, model file, options, outputs)
and which inputs the job covers (their number and a hash of their ordered paths);
resuming with other settings is refused, since the outputs would mix two settings, and
so is resuming with other inputs, since the first job's outputs would then be listed
nowhere. A journal of an older version, without the inputs, is taken as covering them.
While a journal is there the folder counts as written by ``unet predict`` (as one with
its ``predictions.csv`` does), so a fresh run can remove an earlier run's table as soon
as its journal exists, before it replaces any of that run's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unet_lowered.errors import UnetError
from unet_lowered.io import atomic

JOURNAL_FILE = ".predictions.journal"
_HEADER = "# unet predict journal "
_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?")
"""The temporary names of :func:`unet_lowered.io.atomic.atomic_path`: ``.<name>.<random>.<suffix>``."""


class Journal:
    """The append-only record of finished inputs in an output folder.

    Attributes:
        path: ``OUT/.predictions.journal``.
        done: The rows read back when resuming, by id.
        resumed: Whether an interrupted run's journal was read and is continued (else a
            new one was started: the run starts over).
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        done: dict[str, dict[str, str]],
        resumed: bool = False,
    ):
        self.path = path
        self.columns = tuple(columns)
        self.done = done
        self.resumed = resumed
        self._file: Any = None

    @classmethod
    def open(
        cls,
        out_dir: Path,
        settings: dict[str, Any],
        columns: Sequence[str],
        resume: bool,
        inputs: Sequence[str] | None = None,
    ) -> Journal:
        """Start the journal of a run in ``out_dir``; with ``resume``, read the last one's.

        ``inputs``: the job's inputs in order (their resolved paths), recorded as
        :func:`inputs_record` so that ``--resume`` with other inputs is refused; None
        records nothing and accepts any.

        Raises:
            UnetError: ``resume`` and the journal there was written with other settings
                or for other inputs, or it cannot be read or written.
        """
        path = out_dir / JOURNAL_FILE
        record = None if inputs is None else inputs_record(inputs)
        header = _HEADER + json.dumps(
            settings if record is None else {**settings, _INPUTS: record},
            sort_keys=True,
            default=str,
        )
        try:
            done = (
                _read(path, header, settings, columns, record)
                if resume and path.is_file()
                else None
            )
            journal = cls(path, columns, done or {}, resumed=done is not None)
            if done is not None:
                _cut_torn_line(path)
                journal._file = open(path, "a", encoding="utf-8", newline="")
            else:
                journal._file = open(path, "w", encoding="utf-8", newline="")
                journal._file.write(header + "\n" + json.dumps(list(columns)) + "\n")
                journal._sync()
                _sync_folder(out_dir)  # the journal's name is on the disk before what follows
        except OSError as e:
            raise UnetError(
                f"{path}: cannot write the progress journal ({e.strerror or e}); check that "
                "--out is writable and the disk has space"
            ) from None
        return journal

    def append(self, row: dict[str, Any]) -> None:
        """Record one finished input (flushed and synced, so a kill cannot lose it)."""
        self._file.write(json.dumps({k: row.get(k) for k in self.columns}) + "\n")
        self._sync()

    def finish(self) -> None:
        """Close and delete the journal: the run is complete."""
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())


_INPUTS = "inputs"
"""The header's field recording the job's inputs (:func:`inputs_record`)."""


def inputs_record(inputs: Sequence[str]) -> dict[str, Any]:
    """What the journal keeps of a job's inputs (their paths, in order): their number
    and the SHA-256 of the list."""
    digest = hashlib.sha256(json.dumps(list(inputs)).encode("utf-8", "surrogatepass"))
    return {"count": len(inputs), "sha256": digest.hexdigest()}


def _sync_folder(folder: Path) -> None:
    """Make the names created in ``folder`` durable (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported here (Windows, some network file systems)
    finally:
        os.close(fd)


def _read(
    path: Path,
    header: str,
    settings: dict[str, Any],
    columns: Sequence[str],
    record: dict[str, Any] | None = None,
) -> dict[str, dict[str, str]] | None:
    """The finished rows by id; None when the journal is unusable (then start over)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    complete = lines[:-1]  # the text after the last newline is a row cut off by a kill
    if len(complete) < 2 or not complete[0].startswith(_HEADER):
        return None
    if complete[0] != header:
        try:
            before = json.loads(complete[0][len(_HEADER) :])
        except ValueError:
            before = {}
        if not isinstance(before, dict):
            before = {}
        covered = before.pop(_INPUTS, None)  # absent in older journals: taken as the same
        now = json.loads(json.dumps(settings, sort_keys=True, default=str))
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise UnetError(
                f"{path.parent}: the interrupted run there used other settings "
                f"({', '.join(changed) or 'unknown'} differ); run again without --resume to "
                "start over, or with the same settings to finish it"
            )
        if covered is not None and record is not None and covered != record:
            then = covered.get("count") if isinstance(covered, dict) else None
            count = record["count"]
            if then == count:
                counts = f"{then} inputs, also {count} now but not the same files"
            else:
                counts = f"{then if isinstance(then, int) else 'unknown'} inputs, {count} now"
            raise UnetError(
                f"{path.parent}: the interrupted run there covered other inputs ({counts}); "
                "resume with the same inputs to finish it, or run again without --resume "
                "to start over"
            )
    try:
        if json.loads(complete[1]) != list(columns):
            return None
    except ValueError:
        return None
    rows = {}
    for line in complete[2:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a malformed line: redo that input
        if isinstance(row, dict) and set(row) == set(columns) and isinstance(row["id"], str):
            rows[row["id"]] = row
    return rows


def _cut_torn_line(path: Path) -> None:
    """Drop a last line without its newline (a row a kill cut off) before appending."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)


def remove_stale_temps(out_dir: Path, names: Iterable[str]) -> int:
    """Delete the temporary files a killed run left for the outputs ``names``; return how many.

    Only hidden files named as :func:`unet_lowered.io.atomic.atomic_path` names them
    (``.<name>.<8 random characters><suffix>``), for a ``<name>`` this run writes.
    """
    wanted = {atomic.temp_file_stem(n, Path(n).suffix) for n in names}
    removed = 0
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match and match.group("name") in wanted and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed
