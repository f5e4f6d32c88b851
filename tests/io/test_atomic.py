"""Tests for atomic.py: files and folders appear whole or not at all."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import types
from pathlib import Path

import numpy as np
import pytest

from unet_lowered.errors import UnetError
from unet_lowered.io import atomic


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_bytes_text_json(tmp_path):
    atomic.write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic.write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic.write_json(tmp_path / "j.json", {"n": np.int64(3), "a": np.arange(2), "p": Path("x")})
    assert json.loads((tmp_path / "j.json").read_text()) == {"n": 3, "a": [0, 1], "p": "x"}
    assert _hidden(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def boom(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic.save_with(target, boom)
    assert target.read_text() == "old"
    assert _hidden(tmp_path) == []


def test_atomic_path_keeps_suffix_for_format_picking_writers(tmp_path):
    with atomic.atomic_path(tmp_path / "model.keras") as tmp:
        assert tmp.suffix == ".keras"
        assert tmp.parent == tmp_path
        tmp.write_text("m")
    assert (tmp_path / "model.keras").read_text() == "m"


def test_copy_file_is_a_copy_that_outlives_replacing_the_source(tmp_path):
    src, dst = tmp_path / "last.keras", tmp_path / "model.keras"
    atomic.write_bytes(src, b"epoch 1")
    atomic.write_bytes(dst, b"older best")
    atomic.copy_file(src, dst)
    assert dst.read_bytes() == b"epoch 1"
    atomic.write_bytes(src, b"epoch 2")  # replaced by rename, as every writer here does
    assert dst.read_bytes() == b"epoch 1"
    assert src.read_bytes() == b"epoch 2"
    assert _hidden(tmp_path) == []


def test_copy_file_falls_back_to_copying_where_links_fail(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError("links not supported")

    monkeypatch.setattr(atomic.os, "link", no_links)
    src = atomic.write_bytes(tmp_path / "a.bin", b"data")
    atomic.copy_file(src, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"data"
    assert _hidden(tmp_path) == []


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "inside.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~atomic._UMASK
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~atomic._UMASK


def test_atomic_dir_builds_then_renames(tmp_path):
    dest = tmp_path / "out"
    with atomic.atomic_dir(dest) as build:
        assert build.parent == tmp_path
        assert build.name.startswith(".out.tmp-")
        assert not dest.exists()
        (build / "x.txt").write_text("1")
    assert (dest / "x.txt").read_text() == "1"
    assert _hidden(tmp_path) == []


def test_atomic_dir_refuses_existing_without_overwrite(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(UnetError, match="already exists; pass --overwrite"):
        with atomic.atomic_dir(dest):
            pass
    assert (dest / "old.txt").exists()


@pytest.mark.parametrize("existing", ["folder", "file"])
def test_atomic_dir_overwrite_replaces_whole(tmp_path, existing):
    dest = tmp_path / "out"
    if existing == "folder":
        dest.mkdir()
        (dest / "old.txt").write_text("old")
    else:
        dest.write_text("a file in the way")
    with atomic.atomic_dir(dest, overwrite=True) as build:
        (build / "new.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert _hidden(tmp_path) == []


def test_atomic_dir_failure_keeps_old_and_cleans_up(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(dest, overwrite=True) as build:
            (build / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert _hidden(tmp_path) == []


def test_atomic_dir_removes_what_a_killed_run_left(tmp_path):
    stale = tmp_path / ".out.tmp-abc123"
    stale.mkdir()
    (stale / "half.png").write_bytes(b"x")
    with atomic.atomic_dir(tmp_path / "out") as build:
        (build / "ok.txt").write_text("ok")
    assert _hidden(tmp_path) == []
    assert (tmp_path / "out" / "ok.txt").exists()


def test_unwritable_says_disk_full_only_for_a_causeless_error(tmp_path, monkeypatch):
    import collections
    import errno as errno_mod

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage(1, 1, 0))
    missing = OSError(errno_mod.ENOENT, "No such file or directory")
    assert "disk is full" not in str(atomic._unwritable(tmp_path / "x", missing))
    short = OSError("25600 requested and 16352 written")  # NumPy's: no errno
    assert str(atomic._unwritable(tmp_path / "x", short)).endswith(
        "(25600 requested and 16352 written; the disk is full); choose a writable place "
        "with free space"
    )


def test_check_out_folder(tmp_path, monkeypatch):
    atomic.check_out_folder(tmp_path / "new" / "deeper")  # creatable: nothing raised
    assert not (tmp_path / "new").exists()  # and nothing created
    (tmp_path / "f").write_text("x")
    with pytest.raises(UnetError, match=r"^--out .*f: a file, not a folder"):
        atomic.check_out_folder(tmp_path / "f")
    with pytest.raises(UnetError, match=r"^--run .*f/sub: .*f is a file, not a folder"):
        atomic.check_out_folder(tmp_path / "f" / "sub", option="--run")
    monkeypatch.setattr(atomic.os, "access", lambda *_: False)
    with pytest.raises(UnetError, match=r"cannot create or write the folder \(.* read-only"):
        atomic.check_out_folder(tmp_path / "new")


# --- temporary files a kill -9 left behind ----------------------------------------------

OLD = 3600.0  # seconds: well past atomic.STALE_AFTER_S


def _leave(path: Path, age: float = OLD, data: bytes = b"half") -> Path:
    """A file as a killed run leaves it, last written ``age`` seconds ago."""
    path.write_bytes(data)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


@pytest.mark.parametrize(
    ("final", "write"),
    [
        ("last.keras", lambda p: atomic.save_with(p, lambda t: t.write_bytes(b"m"))),
        ("summary.json", lambda p: atomic.write_json(p, {"a": 1})),
        ("table", lambda p: atomic.write_bytes(p, b"no suffix")),
        ("model.keras", lambda p: atomic.copy_file(atomic.write_bytes(p.parent / "x", b"c"), p)),
    ],
)
def test_a_write_removes_the_stale_temps_of_its_own_file_only(tmp_path, final, write):
    suffix = Path(final).suffix
    stale = _leave(tmp_path / f".{final}.2lic1mqk{suffix}")  # the audit's name
    stale_too = _leave(tmp_path / f".{final}.a_9zz0b1{suffix}", age=atomic.STALE_AFTER_S + 5)
    young = _leave(tmp_path / f".{final}.sw9fe_oi{suffix}", age=0)  # a write in progress
    kept = [
        young,
        _leave(tmp_path / ".other.png.2lic1mqk.png"),  # another output's: not ours
        _leave(tmp_path / f".{final}.2lic1mqk.bak"),  # another suffix: not our name
        _leave(tmp_path / f".{final}.2lic1mq{suffix}"),  # 7 random characters
        _leave(tmp_path / f".{final}.notes"),  # a hidden file of the user's
    ]
    folder = tmp_path / f".{final}.dirdirdi{suffix}"  # a folder is never a temp file
    folder.mkdir()
    link = tmp_path / f".{final}.linklink{suffix}"
    link.symlink_to(tmp_path / "elsewhere")
    kept += [folder, link]
    write(tmp_path / final)
    assert not stale.exists() and not stale_too.exists()
    assert _hidden(tmp_path) == sorted(p.name for p in kept)
    assert young.read_bytes() == b"half"


def test_atomic_path_with_its_own_suffix_removes_its_stale_temps(tmp_path):
    stale = _leave(tmp_path / ".model.onnx.k2j3h4g5.onnx")
    other_suffix = _leave(tmp_path / ".model.onnx.k2j3h4g5.tmp")
    with atomic.atomic_path(tmp_path / "model.onnx", suffix=".onnx") as tmp:
        tmp.write_bytes(b"onnx")
    assert not stale.exists()
    assert _hidden(tmp_path) == [other_suffix.name]


def test_a_write_frees_the_stale_temp_before_writing(tmp_path):
    stale = _leave(tmp_path / ".last.keras.2lic1mqk.keras", data=b"x" * 1000)
    with atomic.atomic_path(tmp_path / "last.keras") as tmp:
        assert not stale.exists()  # the space is free for this write
        tmp.write_bytes(b"m")


def test_the_folder_is_listed_once_per_window_not_once_per_write(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(
        atomic, "time", types.SimpleNamespace(time=time.time, monotonic=lambda: clock[0])
    )
    listings = []
    scandir = os.scandir
    monkeypatch.setattr(atomic.os, "scandir", lambda p: listings.append(p) or scandir(p))
    for i in range(50):
        atomic.write_bytes(tmp_path / f"{i}.png", b"p")
    assert len(listings) == 1  # linear in the number of files written
    stale = _leave(tmp_path / ".7.png.2lic1mqk.png")  # killed after the listing
    clock[0] += atomic.STALE_AFTER_S + 1
    atomic.write_bytes(tmp_path / "7.png", b"p")  # the listing is renewed
    assert len(listings) == 2
    assert not stale.exists()


# --- a replacement of a folder cut off by a kill --------------------------------------


def _interrupted_replacement(tmp_path: Path) -> Path:
    """What a kill between atomic_dir's two renames leaves: no DEST, the previous DEST
    under .DEST.tmp-old and the complete (or half-built) new one under .DEST.tmp-*."""
    dest = tmp_path / "out"
    old = tmp_path / ".out.tmp-old"
    (old / "images").mkdir(parents=True)
    (old / "images" / "a.png").write_bytes(b"previous data")
    (old / "dataset.json").write_text("{}")
    half = tmp_path / ".out.tmp-abc12345"
    half.mkdir()
    (half / "half.png").write_bytes(b"x")
    return dest


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


PREVIOUS = {"dataset.json": b"{}", "images/a.png": b"previous data"}


def test_a_killed_replacement_is_undone_before_anything_is_removed(tmp_path):
    dest = _interrupted_replacement(tmp_path)
    with pytest.raises(UnetError, match="already exists; pass --overwrite"):
        with atomic.atomic_dir(dest):
            pass
    assert _tree(dest) == PREVIOUS  # the previous DEST is back, whole
    assert ".out.tmp-old" not in _hidden(tmp_path)


def test_a_failed_overwrite_after_a_killed_one_keeps_the_previous_folder(tmp_path):
    dest = _interrupted_replacement(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(dest, overwrite=True) as build:
            (build / "new.png").write_bytes(b"new")
            raise RuntimeError("failed again")
    assert _tree(dest) == PREVIOUS
    assert _hidden(tmp_path) == []


def test_an_overwrite_after_a_killed_one_completes(tmp_path):
    dest = _interrupted_replacement(tmp_path)
    with atomic.atomic_dir(dest, overwrite=True) as build:
        (build / "new.png").write_bytes(b"new")
    assert _tree(dest) == {"new.png": b"new"}
    assert _hidden(tmp_path) == []


def test_restore_replaced(tmp_path):
    dest = _interrupted_replacement(tmp_path)
    assert atomic.restore_replaced(dest) is True
    assert _tree(dest) == PREVIOUS
    assert atomic.restore_replaced(dest) is False  # nothing to undo
    # DEST there and a .tmp-old beside it: the kill came after the new DEST was in place
    (tmp_path / ".out.tmp-old").mkdir()
    assert atomic.restore_replaced(dest) is False
    assert _tree(dest) == PREVIOUS


def test_a_failed_second_rename_puts_the_previous_folder_back(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    replace = os.replace

    def fail_into_dest(src, dst):
        if Path(dst) == dest:
            raise OSError(errno.EIO, "I/O error")
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_into_dest)
    with pytest.raises(OSError):
        with atomic.atomic_dir(dest, overwrite=True) as build:
            (build / "new.txt").write_text("new")
    assert _tree(dest) == {"old.txt": b"old"}
    assert _hidden(tmp_path) == []


# ---------------------------------------------------------------- one writer at a time


def test_a_second_writer_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with atomic.exclusive(out, "training into"):
        assert atomic.locked(out) and (tmp_path / ".run.lock").is_file()
        with pytest.raises(UnetError) as refused:
            with atomic.exclusive(out, "predicting into"):
                pass
        assert str(refused.value) == (
            f"{out}: another unet command is predicting into there right now; wait for it "
            "to finish, or choose another folder"
        )
        with atomic.exclusive(tmp_path / "other", "predicting into"):  # another folder: fine
            pass
    assert not atomic.locked(out) and not (tmp_path / ".run.lock").exists()
    with atomic.exclusive(out, "training into"):  # free again
        pass
    with atomic.exclusive(tmp_path / "no" / "such" / "run", "training into"):
        pass  # no lock file possible: the command's own checks speak


def test_a_run_being_trained_is_refused_by_its_readers(tmp_path: Path) -> None:
    from run_fixtures import bright_model, make_run
    from unet_lowered.io.runs import load_run

    run = make_run(tmp_path / "run", bright_model(16))
    with atomic.exclusive(run, "training into"):
        with pytest.raises(UnetError, match="`unet train` is writing this run right now"):
            load_run(run)
        assert load_run(run, unfinished=True).dir == run  # unet plot shows it in progress
    assert load_run(run).dir == run


def test_a_symlink_to_a_folder_shares_its_lock_and_dot_names_the_current_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """A writer through a symbolic link to a folder is refused as one through the folder
    (the lock was beside the link's own name), and `.` locks the current folder (its empty
    name made a traceback)."""
    real = tmp_path / "run"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with atomic.exclusive(real, "training into"):
        assert atomic.locked(tmp_path / "link")
        with pytest.raises(UnetError, match="another unet command is predicting into"):
            with atomic.exclusive(tmp_path / "link", "predicting into"):
                pass
    monkeypatch.chdir(real)
    with atomic.exclusive(Path("."), "predicting into"):
        assert (tmp_path / ".run.lock").is_file() and atomic.locked(real)
    with atomic.exclusive(Path("/"), "predicting into"):  # no name: nothing to lock
        pass


def test_a_folder_written_as_dot_and_a_broken_link_as_destination(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path / "d")
    with atomic.atomic_dir(Path("."), overwrite=True) as tmp:
        (tmp / "new.txt").write_text("x")
    assert (tmp_path / "d" / "new.txt").read_text() == "x" and _hidden(tmp_path) == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnetError, match=r"dangling: a broken symbolic link \(to .*nowhere\)"):
        with atomic.atomic_dir("dangling"):
            pass


def test_an_overwrite_through_a_link_to_a_folder_replaces_the_folder_and_keeps_the_link(
    tmp_path: Path,
) -> None:
    """The link was renamed away and a plain folder put in its place: the data went to the
    link's disk, not the target's, and the target kept the old contents."""
    real = tmp_path / "big-disk" / "lungs"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("old")
    link = tmp_path / "lungs"
    link.symlink_to(real, target_is_directory=True)
    with atomic.atomic_dir(link, overwrite=True) as build:
        assert build.parent == real.parent  # built beside the target, renamed in place
        (build / "new.txt").write_text("new")
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert _hidden(tmp_path) == [] and _hidden(real.parent) == []


def test_temporary_names_of_a_long_name_fit_the_file_system(tmp_path: Path) -> None:
    """A 246-byte name (the file system allows 255) got a 260-byte temporary name, and its
    write failed with 'File name too long'. Killed runs' temporaries of it are found."""
    name = "é" * 60 + "L" * 122 + ".png"  # 60 * 2 + 122 + 4 = 246 bytes
    assert len(os.fsencode(name)) == 246
    atomic.write_bytes(tmp_path / name, b"png")
    assert (tmp_path / name).read_bytes() == b"png" and _hidden(tmp_path) == []
    stem = atomic.temp_stem(name, 2 + 8 + 4)
    assert len(os.fsencode(f".{stem}.abcd1234.png")) <= 255 and name.startswith(stem)
    stale = tmp_path / f".{stem}.abcd1234.png"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    atomic._scans.clear()
    assert atomic.clear_stale_temps(tmp_path / name) == 1 and not stale.exists()
    with atomic.atomic_dir(tmp_path / ("D" * 250)) as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / ("D" * 250) / "f").is_file()
    with atomic.exclusive(tmp_path / ("D" * 250), "predicting into"):
        assert atomic.locked(tmp_path / ("D" * 250))
