"""Errors that end a umlroot command with one line and a documented exit code.

One hierarchy for the CLI and the Python API: everything umlroot raises is a
UmlrootError (with the exit code the CLI would use); the timeout and
check=True errors are also subprocess's own, as users of subprocess expect.
"""

from __future__ import annotations

import enum
import subprocess
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    """umlroot's own exit codes (docker/podman/env conventions)."""

    OK = 0
    FAILED = 1  # a subcommand (kernel build, doctor) did not succeed
    TIMEOUT = 124  # --timeout expired
    UMLROOT = 125  # umlroot itself failed: no kernel, boot failure, guest crash
    CANNOT_EXECUTE = 126
    NOT_FOUND = 127
    SIGNAL_BASE = 128  # 128 + N when CMD dies of signal N


class UmlrootError(Exception):
    """A failure shown to the user as `umlroot: MESSAGE` (+ `hint: HINT`).

    The CLI turns it into one line on stderr and `exit_code`; a traceback is
    shown only with --debug.
    """

    def __init__(self, message: str, *, hint: str | None = None,
                 exit_code: int = ExitCode.UMLROOT, details: str | None = None) -> None:
        # Not super(): in the subclasses that are also subprocess's errors,
        # that would be subprocess's __init__, which they call themselves.
        Exception.__init__(self, message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        # Extra lines (e.g. the tail of a kernel log) shown after the message.
        self.details = details


class GuestError(UmlrootError):
    """The guest failed to start, crashed, or is gone (closed, killed):
    nothing was written back. Exit code 125."""


class GuestClosedError(GuestError):
    """An operation on a Guest that was closed, or whose guest died."""


class LostWritesError(GuestError):
    """The host could not store some of the guest's writes (a full or failing
    filesystem under the scratch disk, a --state file or a --disk image):
    the guest's files or the image cannot be trusted. `report` is the
    WritebackReport (nothing was written back if the scratch disk lost writes)."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class GuestBusyError(UmlrootError):
    """A Guest runs one command at a time: another is still running."""


class TimeoutExpired(UmlrootError, subprocess.TimeoutExpired):
    """The command's timeout expired (exit code 124 in the CLI). Also a
    subprocess.TimeoutExpired, so code written for subprocess catches it."""

    def __init__(self, cmd: Sequence[bytes | str], timeout: float, *,
                 output: bytes | None = None, stderr: bytes | None = None,
                 message: str | None = None) -> None:
        subprocess.TimeoutExpired.__init__(self, list(cmd), timeout, output, stderr)
        UmlrootError.__init__(self, message or f"timed out after {timeout:g} s",
                              exit_code=ExitCode.TIMEOUT)

    def __str__(self) -> str:
        return self.message


class CalledProcessError(UmlrootError, subprocess.CalledProcessError):
    """check=True and the command's status was not 0. Also a
    subprocess.CalledProcessError."""

    def __init__(self, returncode: int, cmd: Sequence[bytes | str], *,
                 output: bytes | None = None, stderr: bytes | None = None) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(cmd), output, stderr)
        UmlrootError.__init__(self, subprocess.CalledProcessError.__str__(self),
                              exit_code=returncode)

    def __str__(self) -> str:
        return self.message
