"""The few libc calls Python's os module lacks (inotify, fallocate hole
punching, prctl), through ctypes.

CDLL(None) is the running process itself, which has libc loaded: no
library search (ctypes.util.find_library runs a subprocess, ~10 ms).
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

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


# PDEATHSIG fires when the *thread* that forked the child ends, not the
# process: a Guest made in a short-lived thread would lose its UML with that
# thread. So outside the main thread, children that die with us are forked by
# a thread that lives as long as the process (an idle executor worker never
# exits before interpreter shutdown).
_T = TypeVar("_T")
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def from_long_lived_thread(start: Callable[[], _T]) -> _T:
    """Run start() (which forks a die_with_parent child) in a thread that
    lives as long as this process."""
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return start()
    with _spawner_lock:
        if _spawner is None:
            from concurrent.futures import ThreadPoolExecutor  # only threaded users pay

            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="umlroot-spawn")
    return _spawner.submit(start).result()
