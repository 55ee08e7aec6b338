"""Starting and stopping one UML kernel process.

This module only knows how to turn a MachineSpec into a command line and a
running process, and how to make sure that process is gone afterwards; what
runs inside is the session's business.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umlroot.guest.net import guest_interface
from umlroot.kernel.uml import UmlStarter


@dataclass(frozen=True)
class UbdDisk:
    """A host file the guest sees as /dev/ubd<letter>."""

    path: Path
    read_only: bool = False


@dataclass(frozen=True)
class MachineSpec:
    kernel: Path
    init: Path
    run_dir: Path
    disks: Sequence[UbdDisk]  # disks[0] is the scratch disk (ubda)
    mem: str = "1G"
    cpus: int = 1
    seccomp: bool = True
    quiet: bool = True
    extra: Sequence[str] = field(default_factory=tuple)
    # --net: the guest's end of the helper's socketpair (umlroot/guest/net.py).
    net_fd: int | None = None


@dataclass(frozen=True)
class ChannelFds:
    """Host fds the UML process inherits for the control console (con1)."""

    guest_reads: int
    guest_writes: int


def kernel_command_line(spec: MachineSpec, channel: ChannelFds) -> list[str]:
    """The UML command line, as a list: each element one argv entry."""
    argv = [
        str(spec.kernel),
        f"mem={spec.mem}",
        # The root is hostfs of the host's "/", read-only; init comes from it.
        "rootfstype=hostfs", "rootflags=/", "ro", f"init={spec.init}",
        # Kernel console to the run log (UML's stdout), control on con1,
        # every other console unconnected (no serial lines: CONFIG_SSL is off).
        "con=null", "con0=null,fd:1", f"con1=fd:{channel.guest_reads},fd:{channel.guest_writes}",
        "console=tty0",
        # Paths travel hex-encoded: the kernel command line splits on spaces.
        f"umlroot_run={os.fsencode(spec.run_dir).hex()}",
        # UML's pid file and mconsole socket go in the run directory (removed
        # after the run), not in ~/.uml, where a killed UML would leave them.
        f"uml_dir={spec.run_dir}", "umid=uml",
        # Keep dirty pages in guest memory until something asks for them:
        # with the default background threshold the flusher writes a big
        # output into the throwaway scratch disk while the command runs
        # (docs/architecture.md, "Figures"). A --state file or a --disk is
        # synced at the end anyway, and a writer at dirty_ratio still flushes.
        "sysctl.vm.dirty_background_ratio=50", "sysctl.vm.dirty_ratio=80",
    ]
    if spec.seccomp:
        argv.append("seccomp=on")
        if spec.cpus > 1:
            argv.append(f"ncpus={spec.cpus}")
    if spec.quiet:
        argv.append("quiet")
    for index, disk in enumerate(spec.disks):
        # `d`: plain data, never a UML COW file, whatever its first bytes
        # say (a user's image could start with a COW header).
        flags = ("r" if disk.read_only else "") + "d"
        argv.append(f"ubd{index}{flags}={disk.path}")
    if spec.net_fd is not None:
        argv.append(guest_interface(spec.net_fd))
    argv.extend(spec.extra)
    return argv


def raise_nofile_limit() -> None:
    """hostfs holds one host fd per open guest file: without this, a guest
    `chown -R` over a few thousand files fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Machine:
    """One running UML process, started by `starter`, in its own process group."""

    def __init__(self, spec: MachineSpec, channel: ChannelFds, log_file: Path,
                 starter: UmlStarter) -> None:
        self.argv = kernel_command_line(spec, channel)
        with open(log_file, "ab") as log_out:
            self.process = starter.start(
                self.argv, output=log_out.fileno(),
                pass_fds=(channel.guest_reads, channel.guest_writes,
                          *([] if spec.net_fd is None else [spec.net_fd])))

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Kill UML and every host process it made (its process group)."""
        self.process.kill_group()
