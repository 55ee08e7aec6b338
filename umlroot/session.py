"""Driving one run: the control channel, stdio relay, signals, timeout.

Data paths (see guest-init/init.c for the other side):
- CMD's stdout/stderr: the guest init appends them to `<run dir>/out.1` and
  `out.2` through hostfs; we tail those files (inotify wakes us) and write
  to our own stdout/stderr. We acknowledge consumed offsets so the guest
  never runs more than a window ahead, and punch holes behind us so a long
  output never fills the disk.
- Our stdin: read in chunks into `<run dir>/in.N`, announced with `i N SIZE`
  on the control channel; the guest acknowledges each chunk with `I N`.
  (A console channel moves host->guest data one byte per read(): fine for
  these notices, hopeless for bulk data.)
- Control: pexpect waits for READY (with a timeout) during boot; afterwards
  the lines are read in the same select loop as everything else.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from umlroot.inotify import DirectoryWatch
from umlroot.libc import libc
from umlroot.machine import Machine
from umlroot.terminal import window_size

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

READ_CHUNK = 1 << 20
STDIN_CHUNK = 4 << 20  # the init's stdin buffer is 4 MiB
STDIN_CHUNKS_IN_FLIGHT = 8
ACK_EVERY = 4 << 20
STREAM_WAIT = 0.002
OUTPUT_BATCH_WAIT = 0.002
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# After this many forwarded signals, stop asking: kill the guest.
SIGNALS_BEFORE_KILL = 3


class Outcome(enum.Enum):
    EXITED = "exit"          # CMD exited with a status
    SIGNALED = "signal"      # CMD died of a signal
    NOT_FOUND = "notfound"   # exec: ENOENT
    NOT_EXECUTABLE = "noexec"
    NO_CWD = "nocwd"         # the working directory does not exist inside


@dataclass
class Result:
    """What the guest reported, plus how the run ended on our side."""

    outcome: Outcome | None = None
    value: int = 0
    writeback: str | None = None      # the `WB ...` line, without "WB "
    done: bool = False                # init finished (DONE) before power-off
    boot_error: str | None = None     # `ERR step: message` during boot
    timed_out: bool = False
    killed_by: int | None = None      # signal that made us kill the guest
    phases: dict[str, float] = field(default_factory=dict)


class BootFailed(Exception):
    pass


def _punch_hole(fd: int, start: int, end: int) -> None:
    if end > start:
        libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, end - start)


class OutputTail:
    """Follows one output file the guest appends to, copying it to `dest`."""

    def __init__(self, stream: int, path: Path, dest: int) -> None:
        self.stream = stream
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.dest = dest
        self.offset = 0
        self.acked = 0
        self.broken = False  # our reader went away (EPIPE)

    def pump(self) -> int:
        """Copy whatever is new; returns the number of bytes read."""
        total = 0
        while True:
            data = os.pread(self.fd, READ_CHUNK, self.offset)
            if not data:
                return total
            self.offset += len(data)
            total += len(data)
            if not self.broken:
                self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.dest, view)
            except BlockingIOError:
                select.select([], [self.dest], [])
                continue
            except OSError as error:
                if error.errno not in (errno.EPIPE, errno.EBADF):
                    raise
                # Our reader went away (or there is no such fd): drop the
                # rest, as writes to a closed pipe would.
                self.broken = True
                return
            view = view[written:]

    def ack_due(self) -> bool:
        return self.offset - self.acked >= ACK_EVERY

    def acknowledge(self) -> str:
        _punch_hole(self.fd, self.acked & ~0xFFF, self.offset & ~0xFFF)
        self.acked = self.offset
        return f"a {self.stream} {self.offset}"

    def close(self) -> None:
        os.close(self.fd)


class StdinSpool:
    """Moves our stdin into the guest as chunk files."""

    def __init__(self, run_dir: Path, fd: int = 0) -> None:
        self.run_dir = run_dir
        self.fd = fd
        self.next_chunk = 1
        self.in_flight: set[int] = set()
        self.eof = False
        self.eof_sent = False

    def wants_input(self) -> bool:
        return not self.eof and len(self.in_flight) < STDIN_CHUNKS_IN_FLIGHT

    def read_chunk(self) -> str | None:
        """Read what is available (at least one read, which select said will
        not block); returns the control line announcing it, if any."""
        data = bytearray()
        while len(data) < STDIN_CHUNK:
            try:
                piece = os.read(self.fd, STDIN_CHUNK - len(data))
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno != errno.EIO:  # EIO: terminal hung up
                    raise
                piece = b""
            if not piece:
                self.eof = True
                break
            data += piece
            # A full pipe read means a writer is streaming: wait a moment
            # for more rather than send many small chunks (each costs the
            # guest a file open and a round trip).
            wait = STREAM_WAIT if len(piece) >= 65536 else 0
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                break
        if not data:
            return None
        number = self.next_chunk
        self.next_chunk += 1
        (self.run_dir / f"in.{number}").write_bytes(data)
        self.in_flight.add(number)
        return f"i {number} {len(data)}"

    def consumed(self, number: int) -> None:
        self.in_flight.discard(number)


def _group(match: object) -> str:
    """Group 1 of a pexpect match on a bytes stream, as text."""
    assert isinstance(match, re.Match)
    return bytes(match.group(1)).decode(errors="replace")


class ControlChannel:
    """The host ends of the guest's /dev/tty1."""

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
            # Anything the guest sent after READY stays for the main loop.
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


@dataclass(frozen=True)
class SessionConfig:
    run_dir: Path
    interactive: bool
    pty_to_stdout: bool
    boot_timeout: float = 60.0
    timeout: float | None = None
    # Called once the guest is READY. The runner unlinks the throwaway
    # scratch disk there: the guest has it mounted (UML holds it open), and a
    # run killed outright then leaves no scratch data behind on the host.
    on_ready: Callable[[], None] | None = None


class Session:
    """Runs the protocol against a started Machine until the guest is done."""

    def __init__(self, config: SessionConfig, machine: Machine, channel: ControlChannel,
                 started: float) -> None:
        self.config = config
        self.machine = machine
        self.channel = channel
        self.started = started
        self.result = Result()
        self.outputs = [
            OutputTail(1, config.run_dir / "out.1", 1),
            OutputTail(2, config.run_dir / "out.2", 2),
        ]
        self.stdin = StdinSpool(config.run_dir)
        self.watch = DirectoryWatch(str(config.run_dir))
        self._signals: list[int] = []
        self._forwarded = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sigpipe_sent = False

    # -- signals --------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _install_signal_handlers(self) -> Callable[[], None]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED_SIGNALS}
        previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._on_signal)
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _deliver_signals(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGWINCH:
                size = window_size(1)
                if size and self.config.interactive:
                    self.channel.send(f"w {size[0]} {size[1]}")
                continue
            if self.result.outcome is not None:
                # CMD is gone; writeback is running. Let it finish unless
                # the user insists.
                self._forwarded += 1
            else:
                self.channel.send(f"k {signum}")
                self._forwarded += 1
            if self._forwarded >= SIGNALS_BEFORE_KILL:
                self.result.killed_by = signum
                self.machine.kill()

    # -- main loop --------------------------------------------------------------

    def mark(self, phase: str) -> None:
        self.result.phases[phase] = time.monotonic() - self.started

    def run(self) -> Result:
        restore = self._install_signal_handlers()
        try:
            self._boot()
            if self.result.boot_error is None and self.result.killed_by is None:
                self._relay()
        finally:
            restore()
            self._finish_output()
        return self.result

    def _boot(self) -> None:
        deadline = self._deadline()
        timeout = self.config.boot_timeout
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        try:
            ready_info = self.channel.wait_ready(timeout)
        except BootFailed as error:
            if self._signals:
                self.result.killed_by = self._signals[0]
            elif deadline is not None and time.monotonic() >= deadline:
                self.result.timed_out = True
            else:
                self.result.boot_error = str(error)
            self.machine.kill()
            return
        self.mark("ready")
        if self.config.on_ready is not None:
            self.config.on_ready()
        times = ready_info.split()
        if len(times) == 2:
            # Guest uptime (ms) when init started and when it was ready.
            self.result.phases["guest_init_at"] = int(times[0]) / 1000
            self.result.phases["guest_ready_at"] = int(times[1]) / 1000
        for line in self.channel.pending_lines():
            self._handle_line(line)

    def _deadline(self) -> float | None:
        if self.config.timeout is None:
            return None
        return self.started + self.config.timeout

    def _relay(self) -> None:
        deadline = self._deadline()
        stdin_open = True
        while not self.result.done:
            if self.channel.closed:
                break
            readers: list[int] = [self.channel.from_guest, self.watch.fileno(), self._wake_r]
            if stdin_open and self.result.outcome is None and self.stdin.wants_input():
                readers.append(self.stdin.fd)
            timeout = 1.0
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    self.result.timed_out = True
                    self.machine.kill()
                    return
            ready, _, _ = select.select(readers, [], [], timeout)
            if self._wake_r in ready or self._signals:
                self._deliver_signals()
                if self.result.killed_by is not None:
                    return
            if self.watch.fileno() in ready:
                # Each 4 KiB the guest writes is an inotify event: when output
                # streams, let it pile up a little instead of waking for each
                # (we share two cores with UML).
                time.sleep(OUTPUT_BATCH_WAIT)
                self.watch.drain()
            self._pump_outputs()
            if self.stdin.fd in ready:
                line = self.stdin.read_chunk()
                if line:
                    self.channel.send(line)
                if self.stdin.eof and not self.stdin.eof_sent:
                    self.channel.send("e")
                    self.stdin.eof_sent = True
                    stdin_open = False
            if self.channel.from_guest in ready:
                for line in self.channel.read_lines():
                    self._handle_line(line)
            if not self.machine.alive() and not self.result.done:
                # Drain what the guest managed to say before it died.
                for line in self.channel.read_lines():
                    self._handle_line(line)
                break

    def _pump_outputs(self) -> None:
        for tail in self.outputs:
            tail.pump()
            if tail.broken and tail.stream == 1 and not self.sigpipe_sent:
                # Our reader is gone: CMD gets SIGPIPE, as it would on the host.
                self.sigpipe_sent = True
                if self.result.outcome is None:
                    self.channel.send(f"k {int(signal.SIGPIPE)}")
            if tail.ack_due():
                self.channel.send(tail.acknowledge())

    def _handle_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "I":
            self.stdin.consumed(int(rest))
        elif kind == "EXIT":
            name, _, value = rest.partition(" ")
            self.result.outcome = Outcome(name)
            self.result.value = int(value or 0)
            self.mark("command")
        elif kind == "WB":
            self.result.writeback = rest
        elif kind == "DONE":
            self.result.done = True
            self.mark("writeback")
        elif kind == "ERR":
            self.result.boot_error = rest

    def _finish_output(self) -> None:
        """Copy the last bytes the guest wrote (all written before EXIT)."""
        for tail in self.outputs:
            try:
                tail.pump()
            finally:
                tail.close()
        self.watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
