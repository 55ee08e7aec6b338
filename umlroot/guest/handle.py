"""`umlroot.Guest`: one booted guest, many commands.

The machine's lifetime lives here: kernel and init, run directory, scratch
disk or --state file, --disk files, the UML process and its control
channel, boot (with the ptrace fallback), writeback and shutdown. One
command's session (stdio, signals, status) is session.py's; the public
calls that shape a command like subprocess's are process.py's.

Every resource of a guest sits on one ExitStack, which a weakref finalizer
also closes: an exception, KeyboardInterrupt, garbage collection or the end
of the interpreter kill UML and remove the run directory; if this process
is killed outright, UML dies with it (PDEATHSIG) and the next run sweeps
the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umlroot import log
from umlroot.errors import (
    GuestBusyError,
    GuestClosedError,
    GuestError,
    LostWritesError,
    TimeoutExpired,
    UmlrootError,
)
from umlroot.guest.channel import BootFailed, ControlChannel
from umlroot.guest.command import (
    CommandSpec,
    command_env,
    current_umask,
    needs_host_tmp,
    resolve_cwd,
    writeback_scopes,
)
from umlroot.guest.config import MachineConfig
from umlroot.guest.diagnose import FailureContext, guest_failure, seccomp_refused
from umlroot.guest.disks import DiskSpec, attach_disks, validate_disks
from umlroot.guest.inotify import DirectoryWatch
from umlroot.guest.machine import (
    ChannelFds,
    Machine,
    MachineSpec,
    UbdDisk,
    raise_nofile_limit,
)
from umlroot.guest.net import find_helper, network
from umlroot.guest.process import (
    Arg,
    CompletedProcess,
    Env,
    File,
    Popen,
    argv_bytes,
    maybe_forward,
    run_in,
    timeout_message,
)
from umlroot.guest.request import CommandRequest, MachineRequest
from umlroot.guest.rundir import run_directory
from umlroot.guest.hostbatch import HostWrites
from umlroot.guest.scratch import create_scratch
from umlroot.guest.session import (
    CommandSession,
    Result,
    SessionLimits,
    SignalForwarder,
)
from umlroot.guest.state import open_state
from umlroot.guest.writeback import BlockStore, WritebackReport, lost_writes_line
from umlroot.guest.writeback import load as load_report
from umlroot.kernel import memory as guestmem
from umlroot.kernel.guest_init import build_guest_init
from umlroot.kernel.patches import has_owner_mapping
from umlroot.kernel.select import KernelChoice, find_kernel
from umlroot.kernel.uml import RealStarter, UmlStarter

if TYPE_CHECKING:
    from typing_extensions import Self

BOOT_TIMEOUT = 60.0
# Writeback copies what changed (hundreds of MB take seconds): an hour means
# "stuck", not "slow".
WRITEBACK_TIMEOUT = 3600.0
DISK_DIR = "/dev/disk/by-umlroot"


# -- the machine ---------------------------------------------------------------------------


@contextlib.contextmanager
def running_machine(spec: MachineSpec, log_file: Path,
                    starter: UmlStarter) -> Iterator[tuple[Machine, ControlChannel]]:
    """Start UML with a fresh control channel; kill it (whatever happened) on exit."""
    guest_reads, host_writes = os.pipe2(os.O_CLOEXEC)
    host_reads, guest_writes = os.pipe2(os.O_CLOEXEC)
    try:
        machine = Machine(spec, ChannelFds(guest_reads, guest_writes), log_file, starter)
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


class Guest:
    """A booted guest that runs many commands, one at a time.

    `with Guest(...) as guest:` boots, `guest.run(...)`/`guest.popen(...)`
    run commands as root, the end of the block writes back (or, if the block
    raised, kills the guest and writes nothing back). Keyword arguments are
    `umlroot run`'s options; see docs/api.md.
    """

    def __init__(self, config: MachineConfig | None = None, *,
                 starter: UmlStarter | None = None, deadline: float | None = None,
                 **options: Any) -> None:
        """Boot. `config`, or keywords named as its fields (`mem="2G"`), or
        both (the keywords win); `starter` starts UML (default: the real
        kernel); `deadline` (time.monotonic()) bounds the boot: past it,
        BootTimeout."""
        self._starter: UmlStarter = starter if starter is not None else RealStarter()
        self._launch(MachineConfig.of(config, **options), deadline)

    # -- boot -------------------------------------------------------------------------

    def _launch(self, options: MachineConfig, deadline: float | None) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._busy: CommandSession | None = None
        self._busy_thread: threading.Thread | None = None  # a Popen's relay
        self._next_command = 1
        self._closed = False
        self._dead: str | None = None  # why the guest is gone
        self._final_report: WritebackReport | None = None
        self.cwd = resolve_cwd(options.cwd)
        disk_specs = validate_disks(options.disks)  # bad input fails before anything is built
        if options.net:
            find_helper()
        kernel = find_kernel(options.kernel)
        if not options.real_owners and has_owner_mapping(kernel.patches) is False:
            # Known before booting: the init's hostfs mount would refuse it.
            raise UmlrootError(
                f"{kernel.path} cannot show your files as root's (it lacks umlroot's hostfs "
                "owner mapping, kernel patch 0008)",
                hint="`umlroot kernel build` makes a current kernel; or pass --real-owners "
                     "(real_owners=True) to see the host's owners")
        init = build_guest_init()
        cpus = options.cpus
        if cpus > 1 and not kernel.smp:
            log.warn(f"{kernel.path} has no SMP support; using 1 CPU")
            cpus = 1
        raise_nofile_limit()
        scopes = writeback_scopes(options.writeback, options.writable, self.cwd)
        self._started = time.monotonic()
        self.phases: dict[str, float] = {}
        stack = contextlib.ExitStack()
        # Closed at garbage collection or interpreter exit if nobody closed it.
        self._finalizer = weakref.finalize(self, stack.close)
        self._stack = stack
        try:
            self._prepare(options, deadline, scopes, disk_specs, kernel, init, cpus)
        except BaseException:
            # Unwind with the exception, so open_state can explain a state
            # file the guest could not mount.
            self._finalizer.detach()
            if not stack.__exit__(*sys.exc_info()):
                raise

    def _prepare(self, options: MachineConfig, deadline: float | None, scopes: list[bytes],
                disk_specs: Sequence[DiskSpec], kernel: KernelChoice, init: Path,
                cpus: int) -> None:
        stack = self._stack
        self.run_dir = stack.enter_context(run_directory(options.keep_scratch))
        self.log_file = self.run_dir / "console.log"
        if options.state is not None:
            scratch = stack.enter_context(open_state(options.state, wait=options.state_wait))
        else:
            scratch = self.run_dir / "scratch.img"
            create_scratch(scratch)
        self.phases["scratch"] = time.monotonic() - self._started
        self._host_writes = HostWrites(scratch, self.run_dir, scopes)
        stack.callback(self._host_writes.close)
        attached = attach_disks(disk_specs, self.run_dir)
        # For a lost-writes message: where each device's host file lives.
        self._scopes = scopes
        self._stores = {"ubda": (
            BlockStore("the --state file", options.state.resolve().parent,
                       "the state file may be damaged: make room there, then check it "
                       "with `umlroot state info`")
            if options.state is not None else
            BlockStore("the scratch disk", self.run_dir.parent,
                       "set TMPDIR to a larger filesystem"))}
        for index, disk_spec in enumerate(disk_specs, start=1):
            self._stores[f"ubd{chr(ord('a') + index)}"] = BlockStore(
                f"disk {disk_spec.text}", disk_spec.path.resolve().parent,
                "the image is incomplete: make room there")
        helper = stack.enter_context(network(self.run_dir)) if options.net else None
        self._disk_env = attached.env
        self.disks: dict[str, str] = {link.name: f"{DISK_DIR}/{link.name}"
                                      for link in attached.links}
        request = MachineRequest(
            tmpfs_tmp=not needs_host_tmp(self.cwd, scopes),
            persistent=options.state is not None, scopes=scopes, start_ns=time.time_ns(),
            host_uid=os.getuid(), host_gid=os.getgid(), verbose=options.verbose,
            disks=attached.links, hostname=os.fsencode(socket.gethostname()), net=options.net,
            map_owners=not options.real_owners)
        (self.run_dir / "request").write_bytes(request.encode())
        spec = MachineSpec(kernel=kernel.path, init=init, run_dir=self.run_dir,
                           disks=[UbdDisk(scratch), *attached.ubd], mem=options.mem,
                           cpus=cpus, quiet=not options.verbose, extra=kernel.boot_args,
                           net_fd=helper.guest_fd if helper else None)
        memory_dir = None if guestmem.backing(kernel.patches) is guestmem.Backing.MEMFD \
            else str(guestmem.search_dir())
        self._failure = FailureContext(self.log_file, options.mem, memory_dir)
        self._watch = DirectoryWatch()
        stack.callback(self._watch.close)
        self._start_uml(spec, deadline)
        if options.state is None and not options.keep_scratch:
            # The guest has the throwaway scratch disk open: a guest
            # killed outright then leaves no scratch data on the host.
            scratch.unlink(missing_ok=True)

    def _start_uml(self, spec: MachineSpec, deadline: float | None) -> None:
        timeout = BOOT_TIMEOUT
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        machine_cm = running_machine(spec, self.log_file, self._starter)
        self.machine, self.channel = self._stack.enter_context(machine_cm)
        try:
            ready = self.channel.wait_ready(timeout)
        except BootFailed as error:
            self.machine.kill()
            if deadline is not None and time.monotonic() >= deadline:
                raise BootTimeout from None
            if spec.seccomp and seccomp_refused(self.log_file):
                log.warn("seccomp mode is not available here; using ptrace mode (slower, 1 CPU)")
                return self._start_uml(dataclasses.replace(spec, seccomp=False, cpus=1),
                                           deadline)
            raise self._failed(f"the guest failed to start: {error}",
                               hint="full kernel log: rerun with --keep-scratch or --verbose") \
                from None
        self.phases["ready"] = time.monotonic() - self._started
        times = ready.split()
        if len(times) == 2:
            # Guest uptime (ms) when init started and when it was ready.
            self.phases["guest_init_at"] = int(times[0]) / 1000
            self.phases["guest_ready_at"] = int(times[1]) / 1000
        return None

    def _failed(self, message: str, hint: str | None = None) -> GuestError:
        """The error for a guest that failed or crashed; with verbose, the
        whole kernel log first (the error shows only its end)."""
        if self.options.verbose:
            sys.stderr.write(self.log_file.read_text(errors="replace"))
        return guest_failure(message, self._failure, hint)

    # -- state --------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """The guest runs and takes commands."""
        return not self._closed and self._dead is None and self.machine.alive()

    def _check_usable(self) -> None:
        if self._closed:
            raise GuestClosedError("the guest is closed")
        if self._dead is not None:
            raise GuestClosedError(f"the guest is gone: {self._dead}")
        if not self.machine.alive():
            self._dead = "its UML process died"
            raise self._failed("the guest died while no command ran; nothing was "
                                "written back")
        if self._busy is not None:
            raise GuestBusyError("the guest is still running a command; a Guest runs one "
                                 "at a time (wait() for its Popen first)")

    # -- commands -------------------------------------------------------------------------

    def begin(self, spec: CommandSpec, *, last: bool = False,
              limits: SessionLimits | None = None,
              signals: SignalForwarder | None = None) -> CommandSession:
        """Start a command session; drive it with its relay(), then hand its
        result to finish() (or abandon() it). `last`: the guest writes back
        and powers off when the command ends."""
        if limits is None:
            limits = SessionLimits()
        with self._lock:
            self._check_usable()
            number = self._next_command
            self._next_command += 1
            io_dir = self.run_dir / f"c{number}"
            io_dir.mkdir()
            for name in ("out.1", "out.2"):
                (io_dir / name).touch()
            request = CommandRequest(
                argv=spec.argv, cwd=spec.cwd if spec.cwd is not None else self.cwd,
                env=command_env(spec.env if spec.env is not None else os.environb,
                                self._disk_env),
                umask=current_umask(), tty=spec.tty, winsize=spec.winsize,
                merge_stderr=spec.merge_stderr)
            (io_dir / "request").write_bytes(request.encode())
            session = CommandSession(self.machine, self.channel, self._watch, io_dir, number,
                                     spec.io, last=last, limits=limits, signals=signals,
                                     host_writes=self._host_writes)
            session.start()
            self._busy = session
            return session

    def finish(self, session: CommandSession, result: Result) -> None:
        """After a command: tidy up, and raise if the guest is gone."""
        with self._lock:
            self._busy = None
            self._busy_thread = None
            if not self.options.keep_scratch:
                shutil.rmtree(session.io_dir, ignore_errors=True)
            for name, at in result.phases.items():
                self.phases[name] = at - self._started
            if result.killed_by is not None:
                self._dead = "it was killed after repeated signals"
                return
            if result.timed_out and (session.limits.deadline_kills_guest or
                                     result.outcome is None):
                # The caller raises TimeoutExpired. Without an outcome, the
                # command would not die: the guest was stopped.
                self._dead = "stopped at a command's timeout"
                return
            if result.error is not None:
                self._dead = result.error
                raise self._failed(f"the guest failed: {result.error}")
            if result.outcome is None:
                self._dead = "it crashed"
                raise self._failed("the guest crashed while running the command")
            if session.last:
                if not result.done:
                    self._dead = "it crashed"
                    raise self._failed("the guest crashed after the command finished "
                                        "(during writeback)")
                self._final_report = self._report(result.writeback, result.lost)
                self._shut_down()

    def abandon(self, session: CommandSession) -> None:
        """Our side of a command failed (KeyboardInterrupt, an error while
        relaying): the guest's state is unknown, so it is killed."""
        with self._lock:
            if self._busy is session:
                self._busy = None
                self._busy_thread = None
            self._dead = "interrupted while a command ran"
        self.kill()

    def adopt_relay(self, thread: threading.Thread) -> None:
        """The thread that relays the running command (a Popen's): close()
        waits for it."""
        self._busy_thread = thread

    def signal_command(self, sig: int) -> None:
        """Signal the running command's process group."""
        self.channel.send(f"k {int(sig)}")

    @property
    def final_report(self) -> WritebackReport | None:
        """What the last writeback (at the end) brought back."""
        return self._final_report

    def run(self, args: Arg | Sequence[Arg], *, stdin: File = None, input: bytes | None = None,
            stdout: File = None, stderr: File = None, capture_output: bool = False,
            cwd: Arg | None = None, env: Env | None = None, timeout: float | None = None,
            check: bool = False,
            forward_signals: bool | SignalForwarder = False) -> CompletedProcess:
        """Run a command as root and wait for it, like subprocess.run. On
        `timeout` the command (its process group, then whatever it left) is
        killed and TimeoutExpired raised; the guest lives on.
        `forward_signals`: True, or an installed SignalForwarder that spans
        several commands (its `received` tells what came)."""
        with maybe_forward(forward_signals) as signals:
            return run_in(self, args, stdin=stdin, input=input, stdout=stdout, stderr=stderr,
                          capture_output=capture_output, cwd=cwd, env=env, timeout=timeout,
                          check=check, signals=signals)

    def popen(self, args: Arg | Sequence[Arg], *, stdin: File = None, stdout: File = None,
              stderr: File = None, cwd: Arg | None = None, env: Env | None = None) -> Popen:
        """Start a command and return at once, like subprocess.Popen."""
        return Popen(self, args, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env)

    # -- writeback and the end --------------------------------------------------------------

    def _report(self, line: str | None, lost: str | None) -> WritebackReport | None:
        # Scope `/` (fakeroot's): paths the host denies you are expected.
        report = load_report(line, self.run_dir, lost=lost,
                             denied_fails=b"/" not in self._scopes)
        if report is not None and report.lost:
            report.lost_message = lost_writes_line(report.lost, self._stores,
                                                   written_back=not report.skipped)
        return report

    @staticmethod
    def _checked(report: WritebackReport | None) -> WritebackReport | None:
        """report, unless writes were lost: then LostWritesError."""
        if report is not None and report.lost_message is not None:
            raise LostWritesError(report.lost_message, report)
        return report

    def _await(self, final: str, what: str, timeout: float) -> dict[str, str]:
        """Read control lines until `final`; returns the last line of each
        kind. After `timeout` seconds the guest is killed: TimeoutExpired."""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while final not in seen:
            if time.monotonic() >= deadline:
                self._dead = f"stopped: {what} took longer than {timeout:g} s"
                self.kill()
                raise TimeoutExpired(["writeback"], timeout,
                                     message=f"{what} took longer than {timeout:g} s; "
                                             "the guest was stopped")
            if not self.machine.alive() or self.channel.closed:
                for line in self.channel.read_lines():
                    kind, _, rest = line.partition(" ")
                    seen[kind] = rest
                if final in seen:
                    break
                self._dead = f"it crashed during {what}"
                raise self._failed(f"the guest crashed during {what}")
            ready, _, _ = select.select([self.channel.from_guest], [], [], 0.5)
            if ready:
                for line in self.channel.read_lines():
                    kind, _, rest = line.partition(" ")
                    if kind in HostWrites.REQUESTS:
                        self._host_writes.serve(kind, rest, self.channel)
                    seen[kind] = rest
        return seen

    def writeback(self, timeout: float = WRITEBACK_TIMEOUT) -> WritebackReport | None:
        """Write back now what changed under the writeback scope; None when
        there is no scope (writeback=False). Host files changed after the
        guest started (or after the last writeback) are conflicts, not
        overwritten. close() writes back again, whatever changed since.
        Past `timeout` seconds the guest is killed and TimeoutExpired raised."""
        with self._lock:
            self._check_usable()
            self.channel.send("W")
            seen = self._await("WBDONE", "writeback", timeout)
            return self._checked(self._report(seen.get("WB"), seen.get("LOST")))

    def close(self, timeout: float = WRITEBACK_TIMEOUT) -> WritebackReport | None:
        """Write back, power off, remove everything. A command still running
        (a Popen) is killed first, as a signal would. Returns what was
        written back (None: no writeback scope). Safe to call again. Past
        `timeout` seconds (for the command to stop, then for writeback) the
        guest is killed and TimeoutExpired raised."""
        if self._closed:
            return self._final_report
        busy, thread = self._busy, self._busy_thread
        if busy is not None:
            busy.stop()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._dead = "its command did not stop"
                self.kill()
                raise TimeoutExpired(["close"], timeout,
                                     message=f"the running command did not stop within "
                                             f"{timeout:g} s; the guest was stopped")
        if self._dead is not None or self._closed:
            self.kill()
            return self._final_report
        try:
            with self._lock:
                self._check_usable()
                self.channel.send("q 1")
                seen = self._await("DONE", "writeback", timeout)
                self.phases["writeback"] = time.monotonic() - self._started
                self._final_report = self._report(seen.get("WB"), seen.get("LOST"))
        except BaseException:
            self.kill()
            raise
        self._shut_down()
        return self._checked(self._final_report)

    def _shut_down(self) -> None:
        # The init has synced every filesystem (UBD and hostfs writes are
        # host writes by then): nothing is lost by not waiting for UML's own
        # shutdown, which takes 100-200 ms of timer ticks.
        self.machine.kill()
        self.phases["exited"] = time.monotonic() - self._started
        if self.options.verbose:
            sys.stderr.write(self.log_file.read_text(errors="replace"))
            _show_phases(self.phases)
            copier, batches = self._host_writes.copier, self._host_writes.batches
            if copier.files:
                log.say(f"writeback: {copier.files} big files "
                        f"({copier.bytes / (1 << 20):.0f} MiB of extents) copied on the "
                        "host out of the scratch disk")
            if batches.files:
                log.say(f"writeback: {batches.files} small files written by the host "
                        f"in {batches.seconds * 1000:.0f} ms")
        self._closed = True
        self._finalizer()

    def kill(self) -> None:
        """Stop the guest at once; nothing is written back. Safe to call again."""
        if self._busy is not None:
            self._busy.stop()
        self.machine.kill()
        self._closed = True
        self._finalizer()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "gone" if self._dead else "running"
        return f"<umlroot.Guest {state}, run directory {self.run_dir}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.kill()


class BootTimeout(Exception):
    """The one-shot run's deadline passed during boot."""


def _show_phases(phases: Mapping[str, float]) -> None:
    """verbose: where the time went, so slow phases are visible."""
    scratch_s = phases.get("scratch", 0.0)
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


def run(args: Arg | Sequence[Arg], *, stdin: File = None, input: bytes | None = None,
        stdout: File = None, stderr: File = None, capture_output: bool = False,
        env: Env | None = None, timeout: float | None = None, check: bool = False,
        forward_signals: bool = False, config: MachineConfig | None = None,
        starter: UmlStarter | None = None, **options: Any) -> CompletedProcess:
    """Run one command as root in a fresh guest, like `umlroot run`: boot,
    run, write back (if it ran), power off. The machine is `config` and/or
    keywords named as its fields (cwd=, mem=, writable=, ...); see docs/api.md."""
    machine = MachineConfig.of(config, **options)
    argv_bytes(args)  # no command: fail before booting
    deadline = time.monotonic() + timeout if timeout is not None else None
    with maybe_forward(forward_signals) as signals:
        try:
            guest = Guest(machine, starter=starter, deadline=deadline)
        except BootTimeout:
            assert timeout is not None
            raise TimeoutExpired(argv_bytes(args), timeout,
                                 message=timeout_message(timeout, killed_guest=True)) from None
        try:
            return run_in(guest, args, stdin=stdin, input=input, stdout=stdout, stderr=stderr,
                          capture_output=capture_output, cwd=None, env=env, timeout=timeout,
                          check=check, signals=signals, last=True, deadline=deadline)
        finally:
            guest.kill()
