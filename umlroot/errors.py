"""Errors that end a umlroot command with one line and a documented exit code."""

from __future__ import annotations

import enum


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
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        # Extra lines (e.g. the tail of a kernel log) shown after the message.
        self.details = details
