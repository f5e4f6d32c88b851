"""Atomic writes: a killed run never leaves a half-written file or folder.

Every output goes to a temporary name in the destination's own folder (same
file system) and is moved into place with :func:`os.replace`, which is atomic
on POSIX and Windows.

A run killed with ``kill -9`` cannot remove its temporary file. The next write of the
same file removes it instead (:func:`clear_stale_temps`): every :func:`atomic_path`
(and so :func:`write_json`, :func:`save_with`, :func:`copy_file` ...) first deletes the
hidden files ``.<name>.<8 random characters><suffix>`` of the same final ``<name>`` and
suffix that were last changed more than :data:`STALE_AFTER_S` seconds ago. Another
output's temporary files are never touched, nor are young ones, so two commands writing
into one folder (even the same file) do not delete each other's files in progress.

A folder written by :func:`atomic_dir` with ``overwrite`` is swapped in with two renames
(``DEST`` to ``.DEST.tmp-old``, the new one to ``DEST``); a run killed between them
leaves no ``DEST``, and the next :func:`atomic_dir` of ``DEST`` (or
:func:`restore_replaced`) first renames ``.DEST.tmp-old`` back, so the previous folder
is never lost.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unet_lowered.errors import UnetError


def _read_umask() -> int:
    """The process umask (read once: setting it is the only portable way to read it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


NAME_MAX = 255
"""Bytes in one file name on the usual file systems (ext4, XFS, APFS, NTFS)."""


def temp_stem(name: str, extra: int) -> str:
    """``name`` as it appears in a hidden temporary name that adds ``extra`` bytes to it:
    cut (by whole characters) so the temporary name fits :data:`NAME_MAX`, as the final
    name does. A 246-byte image name made a 260-byte temporary one, and its write failed
    with "File name too long"."""
    while name and len(os.fsencode(name)) + extra > NAME_MAX:
        name = name[:-1]
    return name


def temp_file_stem(name: str, suffix: str) -> str:
    """:func:`temp_stem` of :func:`atomic_path`'s ``.<name>.<8 random><suffix>`` (what
    its temporary names and :func:`clear_stale_temps` use)."""
    return temp_stem(name, 2 + 8 + len(os.fsencode(suffix)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    Args:
        path: The final file path.
        suffix: Suffix of the temporary name (default: the suffix of ``path``, so that
            libraries which pick a format from the extension, e.g. ``model.save``, still work).

    Yields:
        The temporary path to write to. It is removed if the block raises. Temporary
        files of ``path`` that killed runs left (older than :data:`STALE_AFTER_S`) are
        removed first, see :func:`clear_stale_temps`.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Before writing (frees the space a killed run's copy holds, up to a checkpoint's).
        clear_stale_temps(path, suffix)
        prefix = f".{temp_file_stem(path.name, suffix)}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as e:
        raise _unwritable(path, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as e:  # the disk filled up (or went read-only) while writing
            if e.errno in _NO_SPACE or e.filename in (None, str(tmp_path)):
                raise _unwritable(path, e) from None
            raise
        # mkstemp creates 0600; give the final file the permissions a plain open() would.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        try:
            os.replace(tmp_path, path)
        except OSError as e:
            raise _unwritable(path, e) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


STALE_AFTER_S = 60.0
"""A temporary file of :func:`atomic_path` not changed for this long is a killed run's."""

_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix
_MAYBE_TEMP = re.compile(r"\..+\." + _RANDOM + r".*", re.DOTALL)
_MAX_FOLDERS = 256
_scans: dict[str, tuple[float, list[str]]] = {}
"""Per folder (absolute path): when it was last listed, and the names then there that may be
temporary files (the folder is listed again once that is STALE_AFTER_S old)."""
_scans_lock = threading.Lock()


def clear_stale_temps(path: str | os.PathLike, suffix: str | None = None) -> int:
    """Delete the temporary files that killed runs left for the output ``path``; return how many.

    Removed are exactly the regular files (not links, not folders) beside ``path`` named as
    :func:`atomic_path` names its temporary files for ``path`` and ``suffix`` (default: the
    suffix of ``path``), ``.<name>.<8 random characters><suffix>``, and last modified more
    than :data:`STALE_AFTER_S` seconds ago: a write in progress changes its file, and no
    write keeps a temporary file that long without doing so. Temporary files of other
    outputs are kept, so commands writing other files in the same folder are safe.

    The folder is listed at most once per :data:`STALE_AFTER_S` seconds per process (so
    writing thousands of files into one folder stays linear); a file a run killed after
    that listing is removed by a later listing or by the next command.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    stem = temp_file_stem(path.name, suffix)
    pattern = re.compile(re.escape(f".{stem}.") + _RANDOM + re.escape(suffix), re.DOTALL)
    folder = os.path.abspath(path.parent)
    removed = 0
    with _scans_lock:
        names = _candidates(folder)
        for name in [n for n in names if pattern.fullmatch(n)]:
            temp = os.path.join(folder, name)
            try:
                info = os.lstat(temp)
            except OSError:
                names.remove(name)  # renamed into place or removed meanwhile
                continue
            if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime <= STALE_AFTER_S:
                continue
            try:
                os.unlink(temp)
            except OSError:
                continue
            names.remove(name)
            removed += 1
    return removed


def _candidates(folder: str) -> list[str]:
    """The names in ``folder`` that may be temporary files (listed again when that list is
    STALE_AFTER_S old); the caller holds ``_scans_lock``."""
    now = time.monotonic()
    scan = _scans.get(folder)
    if scan is None or now - scan[0] > STALE_AFTER_S:
        try:
            with os.scandir(folder) as entries:
                names = [
                    e.name
                    for e in entries
                    if _MAYBE_TEMP.fullmatch(e.name) and e.is_file(follow_symlinks=False)
                ]
        except OSError:
            names = []
        _scans.pop(folder, None)
        while len(_scans) >= _MAX_FOLDERS:
            del _scans[next(iter(_scans))]  # the one listed longest ago
        scan = _scans[folder] = (now, names)
    return scan[1]


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class UnwritableError(UnetError):
    """An output that cannot be written (read-only place, disk full); ``reason`` is why,
    in the system's words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _unwritable(path: Path, error: OSError) -> UnwritableError:
    """The one-line error for an output that cannot be written (read-only, disk full)."""
    reason = error.strerror or str(error)
    try:
        full = shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        full = False
    # Only an error that names no cause (NumPy's "25600 requested and 16352 written"):
    # a read-only or missing place on a file system with no free space (/proc) is not full.
    if full and error.errno is None:
        reason += "; the disk is full"
    return UnwritableError(
        f"{path}: cannot be written ({reason}); choose a writable place with free space",
        reason,
    )


def check_out_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be created or written.

    ``path`` may exist (a folder) or not; then its nearest existing parent must be a
    writable folder. A file in its place, a read-only file system or a folder without
    permission is a one-line error naming ``option``.
    """
    path = Path(path)
    place = refuse_a_file(path, option)
    if not os.access(place, os.W_OK | os.X_OK):
        raise UnetError(
            f"{option} {path}: cannot create or write the folder ({place} is read-only or "
            "not writable by you); choose a writable place"
        )


def refuse_a_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse a file at ``path`` or in place of one of its parents; return the nearest
    existing folder (``path`` itself when it exists).

    Raises:
        UnetError: A file there, naming ``option``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnetError(f"{option} {path}: a file, not a folder; choose another {option}")
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise UnetError(
            f"{option} {path}: {place} is a file, not a folder; choose another {option}"
        )
    return place


def make_out_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents); a file in its place (or in
    place of a parent), a read-only or unwritable place is a one-line error naming
    ``option``."""
    path = Path(path)
    refuse_a_file(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnetError(
            f"{option} {path}: cannot create the folder ({e.strerror or e}); choose a "
            "writable place"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnetError(
            f"{option} {path}: the folder is not writable (read-only or no permission); "
            f"choose another {option}"
        )
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    A file name that is not valid UTF-8 (a Latin-1 ``caf\xe9.png``), which Python holds
    with surrogate escapes, is written back as its original bytes, as the file system
    gives them (it made ``predictions.csv`` fail with a traceback, and ``--resume`` too).
    """
    return write_bytes(path, text.encode("utf-8", "surrogateescape"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def save_with(path: str | os.PathLike, save: Callable[[Path], Any]) -> Path:
    """Call ``save(tmp_path)`` and move the result onto ``path`` atomically.

    For writers that take a path themselves, e.g. ``save_with(p, model.save)``.
    """
    with atomic_path(path) as tmp:
        save(tmp)
    return Path(path)


def copy_file(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` a copy of the finished file ``src``, atomically.

    A hard link where the file system allows it (no data is copied: a 23 MB checkpoint
    takes no time), else a byte copy. Either is safe here because the files this module
    writes are only ever replaced by rename, never changed in place: replacing ``src``
    later gives it a new inode and leaves ``path`` as it was.
    """
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``dest``, then rename it to ``dest``.

    Args:
        dest: The final folder.
        overwrite: Replace an existing ``dest``. Without it an existing ``dest`` is an error.

    Yields:
        The temporary folder to fill. It is deleted if the block raises, so a failed or
        killed run never leaves a half-built ``dest`` (a killed run may leave the
        hidden ``.<name>.tmp-*`` folder, which the next run removes).

    A symbolic link to a folder is followed: the folder it names is replaced, beside
    itself, and the link still names it.

    An existing ``dest`` is replaced by two renames: ``dest`` to ``.<name>.tmp-old``, then
    the new folder to ``dest``. A run killed between them leaves no ``dest``; this (like
    :func:`restore_replaced`) first renames ``.<name>.tmp-old`` back to ``dest``, so the
    previous folder is back before anything is removed (and is then an existing ``dest``).

    Raises:
        UnetError: ``dest`` exists and ``overwrite`` is false.
    """
    dest = Path(os.path.abspath(dest))  # `.` and `..` have no name to build temporaries from
    if dest.is_symlink() and not dest.exists():
        raise UnetError(
            f"{dest}: a broken symbolic link (to {os.readlink(dest)}); remove it, create its "
            "target folder, or choose another folder"
        )
    if dest.is_symlink() and dest.is_dir():  # replace the folder, keep the link to it
        dest = Path(os.path.realpath(dest))
    try:
        restore_replaced(dest)
    except OSError as e:
        raise _unwritable(dest, e) from None
    if dest.exists() and not overwrite:
        raise UnetError(
            f"{dest} already exists; pass --overwrite to replace it or choose another folder"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stem = _temp_dir_stem(dest.name)
        for stale in dest.parent.glob(f".{glob.escape(stem)}.tmp-*"):
            _discard(stale, dest)  # .tmp-old too: dest is there, so it holds an older one
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=dest.parent))
    except OSError as e:
        raise _unwritable(dest, e) from None
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _unwritable(dest, e) from None
            raise
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; match a plain mkdir
        if dest.exists():
            old = _old(dest)
            _discard(old, dest)
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                restore_replaced(dest)
                raise
            _discard(old, dest)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _temp_dir_stem(name: str) -> str:
    """:func:`temp_stem` of :func:`atomic_dir`'s ``.<name>.tmp-<8 random>``."""
    return temp_stem(name, 2 + len("tmp-") + 8)


def _old(dest: Path) -> Path:
    """Where :func:`atomic_dir` keeps the ``dest`` it replaces until the new one is in place."""
    return dest.with_name(f".{_temp_dir_stem(dest.name)}.tmp-old")


def restore_replaced(dest: str | os.PathLike) -> bool:
    """Undo a replacement of ``dest`` that a kill cut off; return whether there was one.

    When ``dest`` is missing and ``.<name>.tmp-old`` (the previous ``dest``, moved aside by
    :func:`atomic_dir` just before it renames the new one into place) is there, rename it
    back to ``dest``. ``.<name>.tmp-old`` is only ever a whole folder (it is renamed away
    before it is deleted), so what comes back is the complete previous ``dest``.
    """
    dest = Path(dest)
    old = _old(dest)
    if os.path.lexists(dest) or not os.path.lexists(old):
        return False
    try:
        os.rename(old, dest)
    except FileNotFoundError:  # another run restored it first
        return False
    return True


def _discard(path: Path, dest: Path) -> None:
    """Delete ``path`` (a file, link or folder). A folder is first renamed to a fresh
    ``.<dest name>.tmp-del-*`` name, so that a kill while deleting it never leaves a
    partly deleted ``.tmp-old`` that :func:`restore_replaced` would take for whole."""
    if path.is_dir() and not path.is_symlink():
        doomed = path.with_name(f".{_temp_dir_stem(dest.name)}.tmp-del-{os.urandom(4).hex()}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        except OSError:
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        _remove(path)


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree if it exists (an overwritten ``dest`` may be any)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _json_default(obj: Any) -> Any:
    """Make NumPy scalars/arrays and paths JSON-serialisable."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# ---------------------------------------------------------------- one writer at a time


def _lock_path(target: Path) -> Path | None:
    """``.<name>.lock`` beside ``target`` as the file system resolves it (so a symbolic
    link to a run locks the run itself, and `.` the current folder); None for `/`."""
    real = Path(os.path.realpath(target))
    if not real.name:
        return None
    return real.with_name(f".{temp_stem(real.name, 2 + len('lock'))}.lock")


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the writer's lock of ``target`` (an output folder) while the block runs.

    An advisory ``flock`` on ``.<name>.lock`` beside ``target``, removed at the end: a
    second command writing the same ``target`` (two ``unet train --overwrite`` into one
    run, two ``unet predict`` into one folder) is refused at once instead of mixing its
    files with the first one's. A killed holder's lock is released by the system.
    Where ``fcntl`` is missing (Windows) nothing is locked.

    Where the lock file cannot be made (no such parent folder, read-only) nothing is
    locked: the command's own checks of ``target`` then give their one-line errors.

    Raises:
        UnetError: Another process holds the lock; ``what`` says what it is doing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    target = Path(target)
    path = _lock_path(target)
    if path is None:
        yield
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # no parent folder yet, read-only: the writer's own checks say so
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UnetError(
                f"{target}: another unet command is {what} there right now; wait for it "
                "to finish, or choose another folder"
            ) from None
        try:  # the file locked must still be the one at the path (a holder removes it)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def locked(target: str | os.PathLike) -> bool:
    """Whether a command holds :func:`exclusive` on ``target`` now."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    path = _lock_path(Path(target))
    if path is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False
