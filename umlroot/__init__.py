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
from umlroot.guest import Guest
from umlroot.process import DEVNULL, PIPE, STDOUT, CompletedProcess, Popen, run
from umlroot.writeback import WritebackReport

__version__ = "0.1.0"

__all__ = [
    "DEVNULL", "PIPE", "STDOUT", "CalledProcessError", "CompletedProcess", "ExitCode", "Guest",
    "GuestBusyError", "GuestClosedError", "GuestError", "LostWritesError", "Popen",
    "TimeoutExpired",
    "UmlrootError", "WritebackReport", "run",
]
