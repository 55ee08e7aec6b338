"""Starting a UML kernel process: the one place that does, for the guest
(umlroot/guest/machine.py) and the boot probe (probe.py) alike.

`UmlStarter` is the seam: Guest takes one (default: `RealStarter`), so the
session and guest logic can be tested against a fake that speaks the init's
protocol instead of booting a kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Protocol

from umlroot import log
from umlroot.kernel.memory import uml_environment
from umlroot.libc import die_with_parent, from_long_lived_thread


class UmlProcess(Protocol):
    """A started UML: what its users ask of it."""

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status; subprocess.TimeoutExpired after `timeout`."""
        ...

    def kill_group(self) -> None:
        """Kill it and every host process it made; returns once it is reaped."""
        ...


class UmlStarter(Protocol):
    def start(self, argv: Sequence[str], *, output: int,
              pass_fds: Sequence[int] = ()) -> UmlProcess:
        """Start `argv` (a UML command line) with stdout and stderr on the fd
        `output`, stdin on /dev/null, and `pass_fds` inherited."""
        ...


class RealProcess:
    """A UML process in a process group of its own."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


class RealStarter:
    """Starts the real kernel binary named by argv[0]."""

    def start(self, argv: Sequence[str], *, output: int,
              pass_fds: Sequence[int] = ()) -> RealProcess:
        log.show_command(list(argv))
        with open(os.devnull, "rb") as devnull:
            return RealProcess(from_long_lived_thread(lambda: subprocess.Popen(
                list(argv), stdin=devnull, stdout=output, stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds), env=uml_environment(),
                # Own session: a Ctrl-C on the user's terminal reaches umlroot
                # (which forwards it to CMD), never UML itself; and the whole
                # group can be killed.
                start_new_session=True,
                # UML dies with us (PDEATHSIG). Only prctl() runs between fork
                # and exec, with no lock taken.
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )))
