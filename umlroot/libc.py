"""The few libc calls Python's os module lacks (inotify, fallocate hole
punching, prctl), through ctypes.

CDLL(None) is the running process itself, which has libc loaded: no
library search (ctypes.util.find_library runs a subprocess, ~10 ms).
"""

from __future__ import annotations

import ctypes
import signal

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def checked(result: int, what: str, *args: object) -> int:
    """Raise OSError (with errno) for a negative libc result."""
    if result < 0:
        raise OSError(ctypes.get_errno(), what, *args)
    return result


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For preexec_fn: if umlroot is killed outright (kill -9), the kernel
    kills this child too, so a killed run leaves no UML or helper behind."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
