"""Tests for atomic.py: files and folders appear whole or not at all."""

from __future__ import annotations

import json
import os
import stat
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
