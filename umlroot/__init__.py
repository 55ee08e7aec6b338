"""umlroot: a real root for one command, unprivileged, inside User Mode Linux.

Python API (docs/api.md): `umlroot.run(argv, ...)` runs one command in a
fresh guest, like subprocess.run; `umlroot.Guest` boots once and runs many.
"""

from umlroot.errors import (
    CalledProcessError,
    ExitCode,
    GuestBusyError,
    GuestClosedError,
    GuestError,
    LostWritesError,
    TimeoutExpired,
    UmlrootError,
)
from umlroot.guest.config import MachineConfig
from umlroot.guest.handle import Guest, run
from umlroot.guest.process import DEVNULL, PIPE, STDOUT, CompletedProcess, Popen
from umlroot.guest.writeback import WritebackReport
from umlroot.version import __version__


__all__ = [
    "DEVNULL", "PIPE", "STDOUT", "CalledProcessError", "CompletedProcess", "ExitCode", "Guest",
    "GuestBusyError", "GuestClosedError", "GuestError", "LostWritesError", "MachineConfig",
    "Popen", "TimeoutExpired",
    "UmlrootError", "WritebackReport", "run",
]
