"""Run directories: locked while their run lives, swept once it is gone.

Real directories and real locks held by real processes; the end-to-end
`kill -9` case, with UML, is in test_run.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from umlroot.guest import rundir


def hold_lock(path: Path, ready: Path) -> subprocess.Popen[bytes]:
    """Another process that holds `path`'s run-directory lock until killed."""
    code = ("import fcntl, os, pathlib, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "pathlib.Path(sys.argv[2]).touch()\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(ready)])
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    return proc


def make_run_dir(parent: Path, name: str, age: float = 3600) -> Path:
    path = parent / f"{rundir.PREFIX}{name}"
    path.mkdir()
    (path / "scratch.img").write_bytes(b"x" * 8192)
    (path / "console.log").write_text("boot\n")
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_stale_dirs_go_live_and_kept_ones_stay(tmp_path: Path) -> None:
    stale = make_run_dir(tmp_path, "stale")
    live = make_run_dir(tmp_path, "live")
    kept = make_run_dir(tmp_path, "kept")
    (kept / rundir.KEPT_MARKER).touch()
    other = tmp_path / "umlroot-probe-x"  # not a run directory: never touched
    other.mkdir()
    holder = hold_lock(live, tmp_path / "ready")
    try:
        swept = rundir.sweep_stale([tmp_path])
    finally:
        holder.kill()
        holder.wait()
    assert swept.removed == (stale,)
    assert swept.freed >= 8192 and swept.live == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, kept.name, other.name, "ready"])
    # Its holder is gone now: the next sweep takes it.
    assert rundir.sweep_stale([tmp_path]).removed == (live,)


def test_a_brand_new_empty_dir_is_left_for_its_maker(tmp_path: Path) -> None:
    fresh = tmp_path / f"{rundir.PREFIX}new"
    fresh.mkdir()
    assert rundir.sweep_stale([tmp_path]).removed == ()
    old = time.time() - 2 * rundir.UNLOCKED_GRACE_SECONDS
    os.utime(fresh, (old, old))
    assert rundir.sweep_stale([tmp_path]).removed == (fresh,)


def test_run_directory_is_locked_then_removed_or_kept(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(rundir.tempfile, "tempdir", None)  # re-read TMPDIR
    with rundir.run_directory(keep=False) as path:
        assert path.parent == tmp_path and path.name.startswith(rundir.PREFIX)
        (path / "scratch.img").write_bytes(b"data")
        assert rundir.sweep_stale([tmp_path]).removed == ()
    assert not path.exists()
    with rundir.run_directory(keep=True) as kept:
        pass
    assert (kept / rundir.KEPT_MARKER).exists()
    assert rundir.sweep_stale([tmp_path]).removed == ()


def test_scratch_avoids_a_tmp_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TMPDIR: /tmp, unless it is a tmpfs and /var/tmp is on disk (a scratch
    disk in memory costs RAM twice); TMPDIR, when set, always wins."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    kinds = {"/tmp": "ext4", "/var/tmp": "ext4"}
    monkeypatch.setattr(rundir, "filesystem_type", lambda path: kinds[str(path)])
    assert rundir.parent_dir() == Path("/tmp")
    kinds["/tmp"] = "tmpfs"
    assert rundir.parent_dir() == Path("/var/tmp")
    kinds["/var/tmp"] = "tmpfs"
    assert rundir.parent_dir() == Path("/tmp")
    monkeypatch.setenv("TMPDIR", "/tmp")
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    kinds["/var/tmp"] = "ext4"
    assert rundir.parent_dir() == Path("/tmp")
