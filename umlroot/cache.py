"""The per-user cache directory and the file locks that guard it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from umlroot import log


def cache_dir() -> Path:
    """`$UMLROOT_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/umlroot`."""
    explicit = os.environ.get("UMLROOT_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "umlroot"


@contextlib.contextmanager
def exclusive_lock(path: Path, *, what: str, wait: bool = True,
                   say: Callable[[str], None] = log.say) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created if missing) for the block.

    If another process holds it, say so once and wait (or, with wait=False,
    raise BlockingIOError). The lock goes away with the process, so a crash
    never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or not wait:
                raise
            say(f"waiting for {what} (locked by another umlroot: {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)
