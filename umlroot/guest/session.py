"""One command's session in a running guest: stdio relay, signals, status.

The machine (boot, control channel, shutdown) is guest.py's business; this
module drives a single `r N` of the protocol until the guest reports EXIT
(and, for a guest's last command, until DONE).

Data paths (see guest-init/init.c for the other side), all in the command's
directory `<run dir>/cN`:
- CMD's stdout/stderr: the guest init appends them to `out.1` and `out.2`
  through hostfs; we tail those files (inotify wakes us) and hand the bytes
  to a Sink (a host fd, a buffer). We acknowledge consumed offsets so the
  guest never runs more than a window ahead, and punch holes behind us so a
  long output never fills the disk.
- stdin: read from a host fd in chunks into `in.N`, announced with `i N SIZE`
  on the control channel; the guest acknowledges each chunk with `I N`.
  (A console channel moves host->guest data one byte per read(): fine for
  these notices, hopeless for bulk data.)
"""

from __future__ import annotations

import enum
import errno
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from umlroot.errors import UmlrootError
from umlroot.guest.channel import ControlChannel
from umlroot.guest.hostbatch import HostWrites
from umlroot.guest.inotify import DirectoryWatch
from umlroot.libc import libc
from umlroot.guest.machine import Machine
from umlroot.guest.terminal import window_size

if TYPE_CHECKING:
    from typing_extensions import Self

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
# A command killed for its timeout (or by close()) that has not exited after
# this long takes the guest with it.
KILL_GRACE = 10.0


class Outcome(enum.Enum):
    EXITED = "exit"          # CMD exited with a status
    SIGNALED = "signal"      # CMD died of a signal
    NOT_FOUND = "notfound"   # exec: ENOENT
    NOT_EXECUTABLE = "noexec"
    NO_CWD = "nocwd"         # the working directory does not exist inside


@dataclass
class Result:
    """What the guest reported about one command, plus how it ended here."""

    outcome: Outcome | None = None
    value: int = 0
    writeback: str | None = None      # the `WB ...` line (a last command only)
    lost: str | None = None           # the last `LOST ...` line: writes the host refused
    # `OUTLOST <stream> <errno>`: the guest could not store CMD's output in the run dir.
    output_lost: dict[int, int] = field(default_factory=dict)
    done: bool = False                # init finished (DONE) before power-off
    error: str | None = None          # `ERR step: message`: the init gave up
    timed_out: bool = False
    killed_by: int | None = None      # signal that made us kill the guest
    phases: dict[str, float] = field(default_factory=dict)  # monotonic times


# -- where output goes -------------------------------------------------------------


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    @property
    def broken(self) -> bool:
        """The reader went away (EPIPE), or writing failed: the rest is dropped."""
        ...

    @property
    def error(self) -> OSError | None:
        """Why writing failed on our side (a full disk), if it did: the
        command's output did not arrive, so the run fails."""
        ...


class FdSink:
    """A host fd: the user's stdout, a file, a pipe to a Popen reader."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False
        self.error: OSError | None = None
        self.abandoned = threading.Event()  # stop waiting for a stuck reader

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.broken:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                while not self.abandoned.is_set():
                    _, ready, _ = select.select([], [self.fd], [], 0.1)
                    if ready:
                        break
                else:
                    self.broken = True
                continue
            except OSError as error:
                # Our reader went away (or there is no such fd): drop the
                # rest, as writes to a closed pipe would. Any other error
                # (ENOSPC, EIO) loses output: dropped too, and remembered.
                if error.errno not in (errno.EPIPE, errno.EBADF):
                    self.error = error
                self.broken = True
                return
            view = view[written:]


class BufferSink:
    """Captured output (run(capture_output=True))."""

    broken = False
    error: OSError | None = None

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class NullSink:
    broken = False
    error: OSError | None = None

    def write(self, data: bytes) -> None:
        pass


def _punch_hole(fd: int, start: int, end: int) -> None:
    if end > start:
        libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, end - start)


class OutputTail:
    """Follows one output file the guest appends to, copying it to a sink."""

    def __init__(self, stream: int, path: Path, sink: Sink) -> None:
        self.stream = stream
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.sink = sink
        self.offset = 0
        self.acked = 0

    def pump(self) -> int:
        """Copy whatever is new; returns the number of bytes read."""
        total = 0
        while True:
            data = os.pread(self.fd, READ_CHUNK, self.offset)
            if not data:
                return total
            self.offset += len(data)
            total += len(data)
            if not self.sink.broken:
                self.sink.write(data)

    def ack_due(self) -> bool:
        return self.offset - self.acked >= ACK_EVERY

    def acknowledge(self) -> str:
        _punch_hole(self.fd, self.acked & ~0xFFF, self.offset & ~0xFFF)
        self.acked = self.offset
        return f"a {self.stream} {self.offset}"

    def close(self) -> None:
        os.close(self.fd)


class StdinSpool:
    """Moves a host fd's data into the guest as chunk files."""

    def __init__(self, io_dir: Path, fd: int | None) -> None:
        self.io_dir = io_dir
        self.fd = fd
        self.next_chunk = 1
        self.in_flight: set[int] = set()
        self.eof = fd is None
        self.eof_sent = False

    def wants_input(self) -> bool:
        return not self.eof and len(self.in_flight) < STDIN_CHUNKS_IN_FLIGHT

    def read_chunk(self) -> str | None:
        """Read what is available (at least one read, which select said will
        not block); returns the control line announcing it, if any."""
        assert self.fd is not None
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
        try:
            (self.io_dir / f"in.{number}").write_bytes(data)
        except OSError as error:
            # The run directory was removed, or its filesystem is full.
            raise UmlrootError(f"could not pass stdin on to the guest through "
                               f"{self.io_dir}: {error.strerror}",
                               hint="keep the run directory in place and give it room "
                                    "(it lives in $TMPDIR)") from None
        self.in_flight.add(number)
        return f"i {number} {len(data)}"

    def consumed(self, number: int) -> None:
        self.in_flight.discard(number)


# -- signals -----------------------------------------------------------------------


class SignalForwarder:
    """While installed (main thread only), SIGINT/SIGTERM/SIGHUP/SIGQUIT and
    SIGWINCH are queued for the command instead of acting on this process,
    as `umlroot run` does."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.received: list[int] = []  # every signal while installed, SIGWINCH aside
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._restore: Callable[[], None] | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)
        if signum != signal.SIGWINCH:
            self.received.append(signum)

    def __enter__(self) -> Self:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (*FORWARDED_SIGNALS, signal.SIGWINCH)}
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        self._restore = restore
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._restore is not None:
            self._restore()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def take(self) -> list[int]:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        taken, self.pending[:] = list(self.pending), []
        return taken


# -- the session ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommandIO:
    stdin: int | None  # host fd the command's stdin comes from; None: empty
    stdout: Sink
    stderr: Sink
    interactive: bool = False  # stdin and stdout are the host terminal


@dataclass(frozen=True)
class SessionLimits:
    deadline: float | None = None  # time.monotonic() value
    # On the deadline: kill the guest (a one-shot run: nothing is written
    # back), or only the command (a persistent guest lives on).
    deadline_kills_guest: bool = False


class CommandSession:
    """Runs one command of the protocol against a started guest."""

    def __init__(self, machine: Machine, channel: ControlChannel, watch: DirectoryWatch,
                 io_dir: Path, number: int, io: CommandIO, *, last: bool = False,
                 limits: SessionLimits = SessionLimits(),
                 signals: SignalForwarder | None = None,
                 host_writes: HostWrites | None = None) -> None:
        self.machine = machine
        self.host_writes = host_writes
        self.channel = channel
        self.io_dir = io_dir
        self.number = number
        self.io = io
        self.last = last
        self.limits = limits
        self.signals = signals
        self.result = Result()
        self.outputs = [OutputTail(1, io_dir / "out.1", io.stdout),
                        OutputTail(2, io_dir / "out.2", io.stderr)]
        self.stdin = StdinSpool(io_dir, io.stdin)
        self.watch = watch
        watch.add(str(io_dir))
        self._forwarded = 0
        self._kill_sent_at: float | None = None
        self._stop = threading.Event()  # close(): kill the command
        self.sigpipe_sent = False

    def start(self) -> None:
        # Events of the last command's directory (its removal) would only
        # cost this one a batch wait.
        self.watch.drain()
        self.channel.send(f"r {self.number}" + (" last" if self.last else ""))
        if self.stdin.eof:
            self.channel.send("e")
            self.stdin.eof_sent = True

    def stop(self) -> None:
        """From another thread: kill the command (SIGKILL to its group)."""
        self._stop.set()
        for tail in self.outputs:
            if isinstance(tail.sink, FdSink):
                tail.sink.abandoned.set()

    def _kill_command(self) -> None:
        if self._kill_sent_at is None and self.result.outcome is None:
            self.channel.send(f"k {int(signal.SIGKILL)}")
            self._kill_sent_at = time.monotonic()

    # -- signals --------------------------------------------------------------

    def _deliver_signals(self) -> None:
        assert self.signals is not None
        for signum in self.signals.take():
            if signum == signal.SIGWINCH:
                size = window_size(1)
                if size and self.io.interactive:
                    self.channel.send(f"w {size[0]} {size[1]}")
                continue
            if self.result.outcome is None:
                self.channel.send(f"k {signum}")
            # Else CMD is gone and writeback runs: let it finish unless the
            # user insists.
            self._forwarded += 1
            if self._forwarded >= SIGNALS_BEFORE_KILL:
                self.result.killed_by = signum
                self.machine.kill()

    # -- main loop ------------------------------------------------------------

    def _finished(self) -> bool:
        return self.result.done if self.last else self.result.outcome is not None

    def _wait_time(self) -> float:
        """Seconds until the next deadline (at most 0.2: stop() is polled);
        <= 0: it passed."""
        now = time.monotonic()
        times = [now + 0.2]
        if self.limits.deadline is not None and not self.result.timed_out:
            times.append(self.limits.deadline)
        if self._kill_sent_at is not None:
            times.append(self._kill_sent_at + KILL_GRACE)
        return min(times) - now

    def _on_deadline(self) -> bool:
        """Handle passed deadlines; True when the guest is gone."""
        now = time.monotonic()
        if self._kill_sent_at is not None and now >= self._kill_sent_at + KILL_GRACE:
            self.machine.kill()  # the command would not die
            return True
        deadline = self.limits.deadline
        if deadline is not None and now >= deadline and not self.result.timed_out:
            self.result.timed_out = True
            if self.limits.deadline_kills_guest:
                self.machine.kill()
                return True
            self._kill_command()
        return False

    def relay(self) -> Result:
        try:
            self._relay()
        finally:
            self._finish_output()
        return self.result

    def _relay(self) -> None:
        stdin_open = True
        while not self._finished():
            if self.channel.closed:
                break
            if self._stop.is_set():
                self._kill_command()
            readers: list[int] = [self.channel.from_guest, self.watch.fileno()]
            if self.signals is not None:
                readers.append(self.signals.wake_r)
            if stdin_open and self.result.outcome is None and self.stdin.wants_input():
                assert self.stdin.fd is not None
                readers.append(self.stdin.fd)
            timeout = self._wait_time()
            if timeout <= 0:
                if self._on_deadline():
                    return
                continue
            ready, _, _ = select.select(readers, [], [], timeout)
            if self.signals is not None and (self.signals.wake_r in ready or self.signals.pending):
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
            if self.stdin.fd is not None and self.stdin.fd in ready:
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
            if not self.machine.alive() and not self._finished():
                # Drain what the guest managed to say before it died.
                for line in self.channel.read_lines():
                    self._handle_line(line)
                break

    def _pump_outputs(self) -> None:
        for tail in self.outputs:
            tail.pump()
            if tail.sink.broken and tail.stream == 1 and not self.sigpipe_sent:
                # Our reader is gone: CMD gets SIGPIPE, as it would on the host.
                self.sigpipe_sent = True
                if self.result.outcome is None:
                    self.channel.send(f"k {int(signal.SIGPIPE)}")
            if tail.ack_due():
                self.channel.send(tail.acknowledge())

    def _mark(self, phase: str) -> None:
        self.result.phases[phase] = time.monotonic()

    def _handle_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "I":
            self.stdin.consumed(int(rest))
        elif kind == "EXIT":
            name, _, value = rest.partition(" ")
            self.result.outcome = Outcome(name)
            self.result.value = int(value or 0)
            self._mark("command")
        elif kind in HostWrites.REQUESTS:
            # Writeback asks the host to write files (hostbatch.py).
            if self.host_writes is not None:
                self.host_writes.serve(kind, rest, self.channel)
            else:
                self.channel.send(f"x {errno.EOPNOTSUPP}")
        elif kind == "WB":
            self.result.writeback = rest
        elif kind == "LOST":
            self.result.lost = rest
        elif kind == "OUTLOST":
            stream, _, error = rest.partition(" ")
            self.result.output_lost[int(stream)] = int(error or 0)
        elif kind == "DONE":
            self.result.done = True
            self._mark("writeback")
        elif kind == "ERR":
            self.result.error = rest

    def _finish_output(self) -> None:
        """Copy the last bytes the guest wrote (all written before EXIT)."""
        for tail in self.outputs:
            try:
                tail.pump()
            finally:
                tail.close()
