"""The control channel: the host ends of the guest's /dev/tty1.

A UML console moves host-to-guest data one byte per read(), so only short
lines travel here (see guest-init/init.c for the protocol); bulk data goes
through files in the run directory.
"""

from __future__ import annotations

import os
import re

import pexpect
import pexpect.fdpexpect


class BootFailed(Exception):
    pass


def _group(match: object) -> str:
    """Group 1 of a pexpect match on a bytes stream, as text."""
    assert isinstance(match, re.Match)
    return bytes(match.group(1)).decode(errors="replace")


class ControlChannel:
    """Line-oriented, from several threads at once: a line is one write()
    of less than PIPE_BUF bytes, so lines never interleave."""

    def __init__(self, from_guest: int, to_guest: int) -> None:
        self.from_guest = from_guest
        self.to_guest = to_guest
        self._partial = b""
        self.closed = False

    def send(self, line: str) -> None:
        try:
            os.write(self.to_guest, line.encode() + b"\n")
        except BrokenPipeError:
            self.closed = True

    def wait_ready(self, timeout: float) -> str:
        """Wait for READY (returns its arguments) with pexpect; raises
        BootFailed with the init's own error, or on EOF/timeout."""
        child = pexpect.fdpexpect.fdspawn(self.from_guest, timeout=timeout)
        index = child.expect([rb"READY([^\n]*)\r?\n", rb"ERR ([^\n]*)\n", pexpect.EOF, pexpect.TIMEOUT])
        if index == 0:
            # Anything the guest sent after READY stays for the next reader.
            leftover = child.buffer
            self._partial = leftover if isinstance(leftover, bytes) else b""
            return _group(child.match).strip()
        if index == 1:
            raise BootFailed(_group(child.match).strip())
        if index == 2:
            raise BootFailed("the guest stopped before it was ready")
        raise BootFailed(f"the guest was not ready within {timeout:g} s")

    def read_lines(self) -> list[str]:
        try:
            data = os.read(self.from_guest, 65536)
        except BlockingIOError:
            return []
        if not data:
            self.closed = True
        self._partial += data
        return self.pending_lines()

    def pending_lines(self) -> list[str]:
        """Complete lines already buffered (e.g. received along with READY)."""
        *lines, self._partial = self._partial.split(b"\n")
        return [line.rstrip(b"\r").decode(errors="replace") for line in lines]
