"""A minimal inotify watch (ctypes), so the host wakes up as soon as the
guest writes to an output file through hostfs (a plain host write)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

IN_MODIFY = 0x00000002
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirectoryWatch:
    """Becomes readable (fileno) when a file in `path` is modified."""

    def __init__(self, path: str) -> None:
        fd: int = _libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._fd = fd
        if _libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, "inotify_add_watch", path)

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> None:
        """Forget pending events (the caller rereads every file anyway)."""
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._fd)
