"""Atomic writes: a killed run never leaves a half-written file or folder.

Every output goes to a temporary name in the destination's own folder (same
file system) and is moved into place with :func:`os.replace`, which is atomic
on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    Args:
        path: The final file path.
        suffix: Suffix of the temporary name (default: the suffix of ``path``, so that
            libraries which pick a format from the extension, e.g. ``model.save``, still work).

    Yields:
        The temporary path to write to. It is removed if the block raises.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.",
            suffix=path.suffix if suffix is None else suffix,
            dir=path.parent,
        )
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


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _unwritable(path: Path, error: OSError) -> UnetError:
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
    return UnetError(
        f"{path}: cannot be written ({reason}); choose a writable place with free space"
    )


def check_out_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be created or written.

    ``path`` may exist (a folder) or not; then its nearest existing parent must be a
    writable folder. A file in its place, a read-only file system or a folder without
    permission is a one-line error naming ``option``.
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
    if not os.access(place, os.W_OK | os.X_OK):
        raise UnetError(
            f"{option} {path}: cannot create or write the folder ({place} is read-only or "
            "not writable by you); choose a writable place"
        )


def make_out_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents); a read-only or unwritable
    place is a one-line error naming ``option``."""
    path = Path(path)
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
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes(path, text.encode("utf-8"))


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

    Raises:
        UnetError: ``dest`` exists and ``overwrite`` is false.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise UnetError(
            f"{dest} already exists; pass --overwrite to replace it or choose another folder"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            _remove(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
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
            old = dest.with_name(f".{dest.name}.tmp-old")
            _remove(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
