"""One command, as the guest is asked to run it: its spec, and the pure
rules that shape its request (working directory, environment, writeback
scopes, /tmp). Unit-tested without a guest."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umlroot.errors import ExitCode, UmlrootError
from umlroot.guest.request import TtyFlags
from umlroot.guest.session import CommandIO

_SBIN_DIRS = (b"/usr/local/sbin", b"/usr/sbin", b"/sbin")


@dataclass(frozen=True)
class CommandSpec:
    """One command, as the public calls resolved it."""

    argv: Sequence[bytes]
    io: CommandIO
    cwd: bytes | None = None
    env: Mapping[bytes, bytes] | None = None
    merge_stderr: bool = False
    tty: TtyFlags = field(default_factory=lambda: TtyFlags(False, False, False))
    winsize: tuple[int, int] | None = None


def _is_under(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top.rstrip(b"/") + b"/")


def writeback_scopes(writeback: bool, writable: Sequence[Path], cwd: bytes) -> list[bytes]:
    if not writeback:
        return []
    scopes = [cwd]
    for extra in writable:
        resolved = os.path.realpath(os.fsencode(extra))
        if not os.path.isdir(resolved):
            raise UmlrootError(f"--writable {extra}: not a directory",
                               exit_code=ExitCode.UMLROOT)
        scopes.append(resolved)
    # A scope inside another adds nothing.
    unique: list[bytes] = []
    for scope in sorted(set(scopes), key=len):
        if not any(_is_under(scope, kept) for kept in unique):
            unique.append(scope)
    return unique


def root_path(path: bytes) -> bytes:
    """The host's PATH, plus the sbin directories a root shell has (mkfs.*,
    sfdisk, losetup live there; Debian leaves them off users' PATH)."""
    entries = path.split(b":")
    missing = [d for d in _SBIN_DIRS if d not in entries]
    return b":".join([*entries, *missing]) if missing else path


def current_directory() -> bytes:
    """The working directory commands start in; a one-line error if it is gone."""
    try:
        return os.fsencode(os.getcwd())
    except FileNotFoundError:
        raise UmlrootError("the current directory no longer exists (deleted)",
                           hint="cd to a directory that exists and rerun") from None


def resolve_cwd(cwd: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> bytes:
    if cwd is None:
        return current_directory()
    resolved = os.path.realpath(os.fsencode(cwd))
    if not os.path.isdir(resolved):
        raise UmlrootError(f"cwd {os.fsdecode(cwd)}: not a directory")
    return resolved


def needs_host_tmp(cwd: bytes, scopes: Sequence[bytes]) -> bool:
    """/tmp is the host's (under the overlay) when commands work there or a
    writeback scope reaches into it (scope `/`, as `umlroot fakeroot` has),
    else a fresh tmpfs."""
    return _is_under(cwd, b"/tmp") or any(
        _is_under(scope, b"/tmp") or _is_under(b"/tmp", scope) for scope in scopes)


def command_env(env: Mapping[bytes, bytes], extra: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """A command's environment: the given one, plus what every command sees
    inside (README, "What a command sees inside")."""
    out = dict(env)
    out.update(extra)
    out[b"UMLROOT"] = b"1"
    out[b"PATH"] = root_path(out.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin"))
    return out


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
