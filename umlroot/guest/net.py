"""`--net`: the guest's network, served by a user-mode slirp on the host.

The guest's eth0 is UML's vector device with the `fd` transport: one end of
a SOCK_SEQPACKET socketpair, one Ethernet frame per message. The other end
belongs to `vde_plug seqpacket://FD slirp://` (Debian: vdeplug and
libvdeplug-slirp), which runs libslirp: a TCP/IP stack in a normal process
that turns the guest's connections into the host's own sockets. No user
namespace, no tap device, no privilege.

slirp's addresses are fixed (guest-init/init.h has the same numbers): the
guest is 10.0.2.15/24, the host is 10.0.2.2 (its 127.0.0.1 services are
reachable there), and slirp's DNS proxy, which asks the host's resolver, is
10.0.2.3.

The helper belongs to the run: it is killed with the run's other processes,
and dies with umlroot if umlroot is killed outright (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from umlroot import log
from umlroot.errors import UmlrootError
from umlroot.libc import die_with_parent, from_long_lived_thread

HOST_ADDRESS = "10.0.2.2"
# Jumbo frames: vde_plug relays frames through a 9234-byte buffer (VDE's
# Ethernet maximum), and truncates longer ones, which the guest then drops.
# 9000 is the common jumbo size within that; against 1500 it is 6x fewer
# frames through the helper and the guest's driver.
MTU = 9000
SLIRP_URL = f"slirp:///v4/mtu={MTU}/mru={MTU}"
# Room for frames in flight on each side (the kernel caps it at
# net.core.wmem_max/rmem_max, 208 KiB by default, which is still 3 full frames).
SOCKET_BUFFER = 4 << 20

HELPER = "vde_plug"
PACKAGES = ("vdeplug", "libvdeplug-slirp")
MISSING_HINT = (f"install the Debian packages {' and '.join(PACKAGES)} "
                f"(apt-get install {' '.join(PACKAGES)})")
# How long the helper may take to answer its first frame (it answers in
# about 3 ms; a loaded CI host is given much more).
PROBE_TIMEOUT = 5.0


def guest_interface(fd: int) -> str:
    """The UML command line argument that makes eth0 the vector device on fd."""
    return f"vec0:transport=fd,fd={fd},mtu={MTU}"


def find_helper() -> str:
    path = shutil.which(HELPER)
    if path is None:
        raise UmlrootError(f"--net needs {HELPER}, which is not installed", hint=MISSING_HINT)
    return path


_GUEST_MAC = bytes.fromhex("02000000000e")


def arp_probe() -> bytes:
    """An ARP request for the host address, from 0.0.0.0 (an RFC 5227 probe:
    slirp answers it without learning an address for the guest)."""
    broadcast, ethertype_arp = b"\xff" * 6, b"\x08\x06"
    header = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
    return (broadcast + _GUEST_MAC + ethertype_arp + header
            + _GUEST_MAC + bytes(4) + bytes(6) + socket.inet_aton(HOST_ADDRESS))


def is_arp_reply_from_host(frame: bytes) -> bool:
    return (len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02"
            and frame[28:32] == socket.inet_aton(HOST_ADDRESS))


@dataclass
class NetHelper:
    """The running helper and the guest's end of its socketpair."""

    process: subprocess.Popen[bytes]
    guest_end: socket.socket
    log_file: Path

    @property
    def guest_fd(self) -> int:
        return self.guest_end.fileno()

    def failure(self, what: str) -> UmlrootError:
        try:
            said = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            said = []
        detail = f": {said[-1]}" if said else ""
        return UmlrootError(f"--net: {HELPER} {what}{detail}", hint=MISSING_HINT)

    def exited(self) -> UmlrootError:
        self.process.wait()
        return self.failure(f"exited (status {self.process.returncode})")

    def check_answers(self, timeout: float = PROBE_TIMEOUT) -> None:
        """Send one ARP probe and wait for slirp's answer, so a helper that
        cannot work (no slirp plugin) is a one-line error before boot rather
        than a command that finds no network. Costs about 3 ms."""
        try:
            self.guest_end.send(arp_probe())
        except OSError:  # it has already exited (EPIPE, ECONNRESET)
            raise self.exited() from None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.guest_end], [], [], left)
            if not ready:
                break
            try:
                frame = self.guest_end.recv(MTU + 64)
            except OSError:
                frame = b""
            if not frame:
                raise self.exited()
            if is_arp_reply_from_host(frame):
                return
        raise self.failure(f"did not answer within {timeout:g} s")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.guest_end.close()


def start_helper(log_file: Path) -> NetHelper:
    helper = find_helper()
    guest_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (guest_end, helper_end):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    argv = [helper, f"seqpacket://{helper_end.fileno()}", SLIRP_URL]
    log.show_command(argv)
    try:
        with open(log_file, "ab") as log_out:
            process = from_long_lived_thread(lambda: subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                pass_fds=(helper_end.fileno(),),
                # The run directory: it never keeps a user's directory busy,
                # and tests find a run's helper by it.
                cwd=log_file.parent,
                # Its own process group: a Ctrl-C on the terminal goes to
                # umlroot, which forwards it to CMD; the helper stays up.
                start_new_session=True,
                # Only prctl() runs between fork and exec, with no lock taken.
                preexec_fn=die_with_parent,  # noqa: PLW1509
            ))
    except BaseException:
        guest_end.close()
        raise
    finally:
        helper_end.close()
    return NetHelper(process, guest_end, log_file)


@contextlib.contextmanager
def network(run_dir: Path) -> Iterator[NetHelper]:
    """A working helper for one run; gone when the block ends, however it ends."""
    helper = start_helper(run_dir / "net.log")
    try:
        helper.check_answers()
        yield helper
    finally:
        helper.stop()
