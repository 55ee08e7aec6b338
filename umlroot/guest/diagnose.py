"""Explaining a guest that failed to start or died: one line naming the
cause where the kernel log shows it, else the end of the log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from umlroot.kernel import memory as guestmem
from umlroot.errors import GuestError

LOG_TAIL_LINES = 15
SECCOMP_UNAVAILABLE = "SECCOMP userspace requested but not functional"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail)


@dataclass(frozen=True)
class FailureContext:
    """What explains a failed guest besides its kernel log."""

    log_file: Path
    mem: str = "1G"
    # Where UML's memory file was (for a kernel without memfd), if known.
    memory_dir: str | None = None


def guest_failure(message: str, context: FailureContext,
                  hint: str | None = None) -> GuestError:
    """The error for a guest that failed to start or crashed: one line naming
    the cause where the kernel log shows it (guest memory), else `message`
    and the end of the log."""
    log_file, mem = context.log_file, context.mem
    try:
        console = log_file.read_text(errors="replace")
    except OSError:
        console = ""
    memory = guestmem.diagnose(console, context.memory_dir)
    if memory is None and context.memory_dir is not None:
        memory = guestmem.check_directory(context.memory_dir)
    if memory is not None:
        return GuestError(memory.message(mem), hint=guestmem.memdir_hint(mem))
    return GuestError(message, details=log_tail(log_file), hint=hint)


def seccomp_refused(log_file: Path) -> bool:
    """The host refused seccomp mode (e.g. inside a restrictive container)."""
    try:
        return SECCOMP_UNAVAILABLE in log_file.read_text(errors="replace")
    except OSError:
        return False
