"""The few libc calls Python's os module lacks (inotify, fallocate hole
punching, prctl), through ctypes.

CDLL(None) is the running process itself, which has libc loaded: no
library search (ctypes.util.find_library runs a subprocess, ~10 ms).
"""

from __future__ import annotations

import ctypes

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def checked(result: int, what: str, *args: object) -> int:
    """Raise OSError (with errno) for a negative libc result."""
    if result < 0:
        raise OSError(ctypes.get_errno(), what, *args)
    return result
