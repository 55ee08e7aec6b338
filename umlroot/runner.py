"""`umlroot run`: from options to CMD's exit status.

One function per phase, in order: find the kernel and init, make the run
directory (request, output files, scratch disk), start UML, drive the
session, turn the result into an exit status. Everything temporary is
owned by an ExitStack, so Ctrl-C, a timeout or a guest panic leave no
process, file or raw terminal behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umlroot import guestmem, log
from umlroot.disks import attach_disks, validate_disks
from umlroot.errors import ExitCode, UmlrootError
from umlroot.guestinit import build_guest_init
from umlroot.machine import (
    ChannelFds,
    Machine,
    MachineSpec,
    UbdDisk,
    raise_nofile_limit,
)
from umlroot.net import find_helper, network
from umlroot.request import DiskLink, Request, TtyFlags
from umlroot.rundir import run_directory
from umlroot.scratch import create_scratch
from umlroot.session import ControlChannel, Outcome, Result, Session, SessionConfig
from umlroot.state import open_state
from umlroot.terminal import raw_mode, window_size
from umlroot.writeback import report_writeback

LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class RunOptions:
    argv: Sequence[bytes]
    mem: str = "1G"
    # One guest CPU by default: in UML's seccomp mode the threads of one
    # process take turns in its stub, so a second CPU only helps separate
    # processes (make -j), and costs threaded ones (docs/kernel.md, issue 9).
    cpus: int = 1
    kernel: Path | None = None
    verbose: bool = False
    timeout: float | None = None
    keep_scratch: bool = False
    writable: Sequence[Path] = ()
    writeback: bool = True
    state: Path | None = None
    state_wait: bool = True
    disks: Sequence[str] = field(default_factory=tuple)
    # The guest gets a network (umlroot/net.py); off by default, so builds
    # stay hermetic unless asked.
    net: bool = False


def _is_under(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top.rstrip(b"/") + b"/")


def writeback_scopes(options: RunOptions, cwd: bytes) -> list[bytes]:
    if not options.writeback:
        return []
    scopes = [cwd]
    for extra in options.writable:
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


_SBIN_DIRS = (b"/usr/local/sbin", b"/usr/sbin", b"/sbin")


def root_path(path: bytes) -> bytes:
    """The host's PATH, plus the sbin directories a root shell has (mkfs.*,
    sfdisk, losetup live there; Debian leaves them off users' PATH)."""
    entries = path.split(b":")
    missing = [d for d in _SBIN_DIRS if d not in entries]
    return b":".join([*entries, *missing]) if missing else path


def current_directory() -> bytes:
    """The working directory CMD starts in; a one-line error if it is gone."""
    try:
        return os.fsencode(os.getcwd())
    except FileNotFoundError:
        raise UmlrootError("the current directory no longer exists (deleted)",
                           hint="cd to a directory that exists and rerun") from None


def needs_host_tmp(cwd: bytes, scopes: Sequence[bytes]) -> bool:
    """/tmp is the host's (under the overlay) when CMD works there or a
    writeback scope reaches into it (scope `/`, as `umlroot fakeroot` has),
    else a fresh tmpfs."""
    return _is_under(cwd, b"/tmp") or any(
        _is_under(scope, b"/tmp") or _is_under(b"/tmp", scope) for scope in scopes)


def build_request(options: RunOptions, tty: TtyFlags, cwd: bytes, scopes: Sequence[bytes],
                  disks: Sequence[DiskLink], persistent: bool,
                  extra_env: dict[bytes, bytes]) -> Request:
    env = dict(os.environb)
    env.update(extra_env)
    env[b"UMLROOT"] = b"1"
    env[b"PATH"] = root_path(env.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin"))
    umask = os.umask(0)
    os.umask(umask)
    return Request(
        argv=options.argv, env=env, cwd=cwd, umask=umask, tty=tty,
        winsize=window_size(1) if tty.stdout else None,
        tmpfs_tmp=not needs_host_tmp(cwd, scopes),
        persistent=persistent,
        scopes=scopes, start_ns=time.time_ns(),
        host_uid=os.getuid(), host_gid=os.getgid(),
        verbose=options.verbose, disks=disks, hostname=os.fsencode(socket.gethostname()),
        net=options.net,
    )


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
                  hint: str | None = None) -> UmlrootError:
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
        return UmlrootError(memory.message(mem), hint=guestmem.memdir_hint(mem))
    return UmlrootError(message, details=log_tail(log_file), hint=hint)


def exit_status(result: Result, argv0: str, cwd: bytes, context: FailureContext,
                timeout: float | None) -> int:
    """Map the session's result to umlroot's exit status, explaining failures."""
    if result.killed_by is not None:
        return ExitCode.SIGNAL_BASE + result.killed_by
    if result.timed_out:
        log.say(f"timed out after {timeout:g} s; the guest was stopped and nothing written back")
        return ExitCode.TIMEOUT
    if result.boot_error is not None:
        raise guest_failure(f"the guest failed to start: {result.boot_error}", context,
                            hint="full kernel log: rerun with --keep-scratch or --verbose")
    if result.outcome is None:
        raise guest_failure("the guest crashed while running the command", context)
    if not result.done:
        raise guest_failure("the guest crashed after the command finished (during writeback)",
                            context)
    if result.outcome is Outcome.EXITED:
        return result.value
    if result.outcome is Outcome.SIGNALED:
        return ExitCode.SIGNAL_BASE + result.value
    if result.outcome is Outcome.NOT_FOUND:
        log.say(f"{argv0}: command not found")
        return ExitCode.NOT_FOUND
    if result.outcome is Outcome.NOT_EXECUTABLE:
        log.say(f"{argv0}: cannot execute: {os.strerror(result.value)}")
        return ExitCode.CANNOT_EXECUTE
    log.say(f"cannot enter the working directory {os.fsdecode(cwd)} in the guest: "
            f"{os.strerror(result.value)}")
    return ExitCode.UMLROOT


def _show_phases(result: Result, scratch_s: float) -> None:
    """--verbose: where the time went, so slow phases are visible."""
    phases = result.phases
    parts = [f"scratch {scratch_s * 1000:.0f} ms"]
    if "ready" in phases:
        boot = phases["ready"] - scratch_s
        init_to_ready = phases.get("guest_ready_at", 0.0) - phases.get("guest_init_at", 0.0)
        parts.append(f"UML start to init {(boot - init_to_ready) * 1000:.0f} ms")
        parts.append(f"init to READY {init_to_ready * 1000:.0f} ms")
    previous = phases.get("ready", scratch_s)
    for name, label in (("command", "command"), ("writeback", "writeback"),
                        ("exited", "shutdown")):
        if name in phases:
            parts.append(f"{label} {(phases[name] - previous) * 1000:.0f} ms")
            previous = phases[name]
    log.say("timing: " + ", ".join(parts))


SECCOMP_UNAVAILABLE = "SECCOMP userspace requested but not functional"


@contextlib.contextmanager
def running_machine(spec: MachineSpec, log_file: Path) -> Iterator[tuple[Machine, ControlChannel]]:
    """Start UML with a fresh control channel; kill it (whatever happened) on exit."""
    guest_reads, host_writes = os.pipe2(os.O_CLOEXEC)
    host_reads, guest_writes = os.pipe2(os.O_CLOEXEC)
    try:
        machine = Machine(spec, ChannelFds(guest_reads, guest_writes), log_file)
    except BaseException:
        for fd in (host_reads, host_writes):
            os.close(fd)
        raise
    finally:
        # The guest's ends live on in UML only: when UML exits, we see EOF.
        os.close(guest_reads)
        os.close(guest_writes)
    try:
        yield machine, ControlChannel(host_reads, host_writes)
    finally:
        machine.kill()
        os.close(host_reads)
        os.close(host_writes)


def seccomp_failed(result: Result, log_file: Path) -> bool:
    """The host refused seccomp mode (e.g. inside a restrictive container)."""
    if result.outcome is not None or result.timed_out or result.killed_by is not None:
        return False
    try:
        return SECCOMP_UNAVAILABLE in log_file.read_text(errors="replace")
    except OSError:
        return False


def boot_and_run(spec: MachineSpec, config: SessionConfig, log_file: Path,
                 started: float) -> Result:
    """Run the session; fall back to ptrace mode (1 CPU) only where seccomp
    mode cannot start: guest syscalls cost about 3x more there."""
    with running_machine(spec, log_file) as (machine, channel):
        session = Session(config, machine, channel, started)
        result = session.run()
        if result.done:
            # The init has synced every filesystem (UBD and hostfs writes
            # are host writes by then): nothing is lost by not waiting for
            # UML's own shutdown, which takes 100-200 ms of timer ticks.
            machine.kill()
            session.mark("exited")
    if spec.seccomp and seccomp_failed(result, log_file):
        log.warn("seccomp mode is not available here; using ptrace mode (slower, 1 CPU)")
        fallback = dataclasses.replace(spec, seccomp=False, cpus=1)
        return boot_and_run(fallback, config, log_file, started)
    return result


def run(options: RunOptions) -> int:
    from umlroot.kernel.select import find_kernel

    if not options.argv:
        raise UmlrootError("no command given", hint="umlroot run -- CMD [ARGS...]")
    cwd = current_directory()
    disk_specs = validate_disks(options.disks)  # bad input fails before anything is built
    if options.net:
        find_helper()
    kernel = find_kernel(options.kernel)
    init = build_guest_init()
    cpus = options.cpus
    if cpus > 1 and not kernel.smp:
        log.warn(f"{kernel.path} has no SMP support; using 1 CPU")
        cpus = 1
    raise_nofile_limit()
    tty = TtyFlags.of_process()
    scopes = writeback_scopes(options, cwd)

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        run_dir = stack.enter_context(run_directory(options.keep_scratch))
        log_file = run_dir / "console.log"
        if options.state is not None:
            scratch = stack.enter_context(open_state(options.state, wait=options.state_wait))
        else:
            scratch = run_dir / "scratch.img"
            create_scratch(scratch)
        scratch_s = time.monotonic() - started
        disks = attach_disks(disk_specs, run_dir)
        helper = stack.enter_context(network(run_dir)) if options.net else None
        request = build_request(options, tty, cwd, scopes, disks=disks.links,
                                persistent=options.state is not None, extra_env=disks.env)
        (run_dir / "request").write_bytes(request.encode())
        for name in ("out.1", "out.2"):
            (run_dir / name).touch()

        spec = MachineSpec(kernel=kernel.path, init=init, run_dir=run_dir,
                           disks=[UbdDisk(scratch), *disks.ubd], mem=options.mem, cpus=cpus,
                           quiet=not options.verbose, extra=kernel.boot_args,
                           net_fd=helper.guest_fd if helper else None)
        throwaway = options.state is None and not options.keep_scratch
        config = SessionConfig(run_dir=run_dir, interactive=tty.interactive,
                               pty_to_stdout=tty.stdout, timeout=options.timeout,
                               on_ready=(lambda: scratch.unlink(missing_ok=True))
                               if throwaway else None)
        # Raw only while the guest runs: our own messages below need the
        # terminal's normal newline handling.
        with raw_mode(0) if tty.interactive else contextlib.nullcontext():
            result = boot_and_run(spec, config, log_file, started)
        if options.verbose:
            sys.stderr.write(log_file.read_text(errors="replace"))
            _show_phases(result, scratch_s)
        memory_dir = None if guestmem.backing(kernel.patches) is guestmem.Backing.MEMFD \
            else str(guestmem.search_dir())
        status = exit_status(result, os.fsdecode(options.argv[0]), cwd,
                             FailureContext(log_file, options.mem, memory_dir), options.timeout)
        report_writeback(result.writeback, verbose=options.verbose, run_dir=run_dir)
        return status
