"""Per-run directories (`$TMPDIR/umlroot-run-*`): made, locked, removed, and
swept up after runs that were killed outright.

A live run holds an exclusive flock on its directory for its whole life. The
lock goes away with the process, however it ends, so a directory whose lock
can be taken belongs to a run that is gone (`kill -9`, OOM killer, a
cancelled CI job) and is removed by the next run or `umlroot doctor`:
its scratch disk, kernel log and output files would otherwise stay forever.
Directories kept on purpose (`--keep-scratch`) carry a marker and stay.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from umlroot import log

PREFIX = "umlroot-run-"
KEPT_MARKER = "KEPT"
# A directory made but not yet locked (mkdtemp and flock are two steps) is
# empty and brand new; the sweeper leaves such a one alone for this long.
UNLOCKED_GRACE_SECONDS = 60.0
# Run directory paths travel on UML's command line (uml_dir=, ubdN=).
_SAFE_PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+")


# Filesystems that live in memory: a scratch disk there costs RAM twice
# (the tmpfs pages, and the guest's page cache of the same data).
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
_TEMP_VARIABLES = ("TMPDIR", "TEMP", "TMP")
_ON_DISK_FALLBACK = Path("/var/tmp")


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path` (the longest mount point
    above it in /proc/self/mounts); "" if unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def parent_dir() -> Path:
    """Where run directories (and their scratch disks) go: $TMPDIR when set;
    else /tmp, unless /tmp lives in memory and /var/tmp is on disk (Debian
    trixie's /tmp is a tmpfs). A path that cannot travel on the UML command
    line falls back to /tmp."""
    if any(os.environ.get(name) for name in _TEMP_VARIABLES):
        candidate = Path(tempfile.gettempdir())
    else:
        candidate = Path("/tmp")
        if (filesystem_type(candidate) in MEMORY_FILESYSTEMS
                and os.access(_ON_DISK_FALLBACK, os.W_OK | os.X_OK)
                and filesystem_type(_ON_DISK_FALLBACK) not in MEMORY_FILESYSTEMS):
            candidate = _ON_DISK_FALLBACK
    if set(str(candidate)) <= _SAFE_PATH_CHARS:
        return candidate
    return Path("/tmp")


def sweep_dirs() -> list[Path]:
    """Where run directories of this user may be: the current parent, /tmp
    and /var/tmp."""
    return list(dict.fromkeys([parent_dir(), Path("/tmp"), _ON_DISK_FALLBACK]))


def _lock_dir(path: Path, *, wait: bool) -> int | None:
    """An fd holding an exclusive flock on directory `path`; None if another
    process holds it (only with wait=False)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


@dataclass(frozen=True)
class Swept:
    removed: tuple[Path, ...]
    freed: int  # bytes of host disk the removed directories held
    live: int  # directories of runs still going


def _allocated(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _is_stale_candidate(entry: os.DirEntry[str], uid: int) -> bool:
    if not entry.name.startswith(PREFIX):
        return False
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid


def _sweep_one(path: Path) -> int | None:
    """Remove `path` if no live run holds it; the bytes freed, or None if kept."""
    try:
        fd = _lock_dir(path, wait=False)
    except OSError:
        return None  # gone meanwhile, or not ours to open
    if fd is None:
        return None
    try:
        if (path / KEPT_MARKER).exists():
            return None
        st = os.fstat(fd)
        if st.st_nlink <= 2 and not os.listdir(fd) and \
                time.time() - st.st_mtime < UNLOCKED_GRACE_SECONDS:
            return None  # just made by a run that is about to lock it
        freed = _allocated(path)
        shutil.rmtree(path, ignore_errors=True)
        return freed
    finally:
        os.close(fd)


def sweep_stale(parents: list[Path] | None = None) -> Swept:
    """Remove this user's run directories that no live run holds."""
    uid = os.getuid()
    removed: list[Path] = []
    freed = live = 0
    for parent in parents if parents is not None else sweep_dirs():
        try:
            entries = [e for e in os.scandir(parent) if _is_stale_candidate(e, uid)]
        except OSError:
            continue
        for entry in entries:
            got = _sweep_one(Path(entry.path))
            if got is None:
                live += 1
            else:
                removed.append(Path(entry.path))
                freed += got
    return Swept(tuple(removed), freed, live)


@contextlib.contextmanager
def run_directory(keep: bool) -> Iterator[Path]:
    """A fresh run directory, locked while the run lives; removed afterwards
    unless `keep` (then marked, so no later sweep removes it)."""
    swept = sweep_stale()
    if swept.removed:
        log.debug(f"removed {len(swept.removed)} run directories of killed runs "
                  f"({swept.freed // 2**20} MiB): {' '.join(map(str, swept.removed))}")
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent_dir()))
    # Blocking: a sweeper that saw the empty directory holds the lock for
    # an instant and leaves it alone (see UNLOCKED_GRACE_SECONDS).
    fd = _lock_dir(path, wait=True)
    assert fd is not None
    try:
        yield path
    finally:
        if keep:
            (path / KEPT_MARKER).write_text("kept by --keep-scratch; remove it when done\n")
            log.say(f"kept the run directory (scratch disk, logs): {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
