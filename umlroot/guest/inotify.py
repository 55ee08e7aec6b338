"""A minimal inotify watch (ctypes), so the host wakes up as soon as the
guest writes to an output file through hostfs (a plain host write)."""

from __future__ import annotations

import os

from umlroot.libc import checked, libc

IN_MODIFY = 0x00000002
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000


class DirectoryWatch:
    """Becomes readable (fileno) when a file in a watched directory is modified.

    One per guest, not per command: closing an inotify instance waits for an
    RCU grace period (2-3 ms here, most of a short command's cost); a watch
    on a directory that is removed goes away by itself.
    """

    def __init__(self) -> None:
        self._fd = checked(libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK), "inotify_init1")

    def add(self, path: str) -> None:
        checked(libc.inotify_add_watch(self._fd, os.fsencode(path), IN_MODIFY),
                "inotify_add_watch", path)

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
