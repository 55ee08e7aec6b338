"""The requests the host hands the guest init: the machine's, and each command's.

The machine's is written to `<run dir>/request` before boot, each command's to
`<run dir>/cN/request` before `r N`; the init reads them through hostfs, so
nothing large ever crosses the (slow, byte-at-a-time) console channel.
Format: records of `tag NUL value NUL`; argv and environment entries are C
strings already, so any bytes but NUL pass unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TtyFlags:
    """Which of the host's stdin/stdout/stderr are terminals."""

    stdin: bool
    stdout: bool
    stderr: bool

    @classmethod
    def of_process(cls) -> TtyFlags:
        return cls(os.isatty(0), os.isatty(1), os.isatty(2))

    @property
    def interactive(self) -> bool:
        """stdin and stdout both terminals: the host terminal goes raw and the
        guest's pseudo-terminal does line editing, echo and Ctrl-C."""
        return self.stdin and self.stdout

    def encode(self) -> str:
        return "".join("1" if flag else "0" for flag in (self.stdin, self.stdout, self.stderr))


@dataclass(frozen=True)
class DiskLink:
    device: str  # ubdb, ubdc, ...
    name: str    # /dev/disk/by-umlroot/<name>


def encode_records(records: Iterator[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for tag, value in records:
        if b"\0" in value:
            raise ValueError(f"NUL byte in request field {tag.decode()}")
        out += tag + b"\0" + value + b"\0"
    return bytes(out)


@dataclass(frozen=True)
class MachineRequest:
    """What holds for the guest's whole life: `<run dir>/request`."""

    tmpfs_tmp: bool = True
    persistent: bool = False
    scopes: Sequence[bytes] = ()
    start_ns: int = 0
    host_uid: int = 0
    host_gid: int = 0
    verbose: bool = False
    hostname: bytes = b""
    net: bool = False
    # The invoking user's host files show as root's (host_uid/gid <-> 0).
    map_owners: bool = True
    disks: Sequence[DiskLink] = field(default_factory=tuple)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        yield b"tmpfs-tmp", b"1" if self.tmpfs_tmp else b"0"
        yield b"persistent", b"1" if self.persistent else b"0"
        for scope in self.scopes:
            yield b"scope", scope
        seconds, nanos = divmod(self.start_ns, 1_000_000_000)
        yield b"t0", b"%d.%09d" % (seconds, nanos)
        yield b"uid", b"%d" % self.host_uid
        yield b"gid", b"%d" % self.host_gid
        yield b"verbose", b"1" if self.verbose else b"0"
        if self.hostname:
            yield b"hostname", self.hostname
        if self.net:
            yield b"net", b"1"
        yield b"map-owners", b"1" if self.map_owners else b"0"
        for disk in self.disks:
            yield b"disk", f"{disk.device} {disk.name}".encode()

    def encode(self) -> bytes:
        return encode_records(self.records())


@dataclass(frozen=True)
class CommandRequest:
    """One command: `<run dir>/cN/request`."""

    argv: Sequence[bytes]
    env: Mapping[bytes, bytes]
    cwd: bytes
    umask: int
    tty: TtyFlags
    winsize: tuple[int, int] | None = None
    merge_stderr: bool = False

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        for arg in self.argv:
            yield b"arg", arg
        for key, value in self.env.items():
            yield b"env", key + b"=" + value
        yield b"cwd", self.cwd
        yield b"umask", b"%o" % self.umask
        yield b"tty", self.tty.encode().encode()
        if self.winsize:
            yield b"winsize", b"%d %d" % self.winsize
        if self.merge_stderr:
            yield b"merge-stderr", b"1"

    def encode(self) -> bytes:
        return encode_records(self.records())
