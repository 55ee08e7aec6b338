"""The public calls: `umlroot.run()`, `Guest.run()`, `Guest.popen()`.

Shaped like subprocess's: argv as a list (bytes or str), stdin/stdout/stderr
as None (inherit), PIPE, DEVNULL, STDOUT (for stderr), a file descriptor or a
file object; `input`, `capture_output`, `cwd`, `env`, `timeout`, `check`; a
CompletedProcess whose returncode is the status the CLI would exit with.
This module only turns those arguments into a CommandSpec for guest.py and
a session's Result into a returncode or an exception.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from umlroot.errors import CalledProcessError, ExitCode, GuestError, TimeoutExpired
from umlroot.guest import BootTimeout, CommandSpec, Guest, GuestOptions, resolve_cwd
from umlroot.request import TtyFlags
from umlroot.session import (
    BufferSink,
    CommandIO,
    CommandSession,
    FdSink,
    NullSink,
    Outcome,
    Result,
    SessionLimits,
    SignalForwarder,
    Sink,
)
from umlroot.terminal import raw_mode, window_size
from umlroot.writeback import WritebackReport

if TYPE_CHECKING:
    from typing_extensions import Self

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL

Arg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
File = int | IO[Any] | None
Env = Mapping[str, str] | Mapping[bytes, bytes]


class CompletedProcess(subprocess.CompletedProcess[bytes]):
    """subprocess's CompletedProcess, plus what umlroot knows besides.

    returncode: the command's status; 128+N if it died of signal N; 126/127
    if it could not be executed / was not found; 125 if its working
    directory does not exist in the guest. `error` explains 125-127 in one
    line (what the CLI prints). `writeback`: what a one-shot run() wrote
    back (None for Guest.run(): the guest writes back at close()).
    """

    def __init__(self, args: Any, returncode: int, stdout: bytes | None = None,
                 stderr: bytes | None = None, *, error: str | None = None,
                 writeback: WritebackReport | None = None) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.error = error
        self.writeback = writeback

    def check_returncode(self) -> None:
        if self.returncode:
            raise CalledProcessError(self.returncode, self.args, output=self.stdout,
                                     stderr=self.stderr)


def argv_bytes(args: Arg | Sequence[Arg]) -> list[bytes]:
    """argv as bytes, passed unchanged; a lone string is the program, as in
    subprocess without a shell."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    argv = [os.fsencode(arg) for arg in args]
    if not argv:
        raise ValueError("no command given")
    return argv


def env_bytes(env: Env | None) -> dict[bytes, bytes] | None:
    if env is None:
        return None
    return {os.fsencode(key): os.fsencode(value) for key, value in env.items()}


def returncode_of(result: Result, argv0: bytes) -> tuple[int, str | None]:
    """The CLI's exit status for a command, and the line that explains it."""
    name = os.fsdecode(argv0)
    if result.killed_by is not None:
        return ExitCode.SIGNAL_BASE + result.killed_by, None
    if result.outcome is Outcome.EXITED:
        return result.value, None
    if result.outcome is Outcome.SIGNALED:
        return ExitCode.SIGNAL_BASE + result.value, None
    if result.outcome is Outcome.NOT_FOUND:
        return ExitCode.NOT_FOUND, f"{name}: command not found"
    if result.outcome is Outcome.NOT_EXECUTABLE:
        return ExitCode.CANNOT_EXECUTE, f"{name}: cannot execute: {os.strerror(result.value)}"
    return ExitCode.UMLROOT, ("cannot enter the working directory in the guest: "
                              f"{os.strerror(result.value)}")


def with_delivery(returncode: int, error: str | None, report: WritebackReport | None,
                  lost_writes: str | None) -> tuple[int, str | None]:
    """A run's status once its output is accounted for: a fault never passes
    as success. Writes the host could not store make any run fail (125: the
    guest's files, or an image, cannot be trusted). Output in scope that
    could not be delivered (a full or read-only destination, a conflict)
    fails a run whose command succeeded (125: umlroot's failure, not the
    command's; the writeback summary names the paths); a failed command
    keeps its own status."""
    if lost_writes is not None:
        return ExitCode.UMLROOT, lost_writes
    if report is not None and not report.delivered() and returncode == 0:
        return ExitCode.UMLROOT, error
    return returncode, error


# -- stdio -----------------------------------------------------------------------------


def _fd_of(spec: int | IO[Any]) -> int:
    if isinstance(spec, int):
        return spec
    spec.flush()
    return spec.fileno()


def _valid_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _isatty(sink: Sink) -> bool:
    return isinstance(sink, FdSink) and os.isatty(sink.fd)


@dataclass
class Stdio:
    """A command's resolved stdio, and what to close when it is done."""

    stdin: int | None = None
    stdout: Sink = field(default_factory=NullSink)
    stderr: Sink = field(default_factory=NullSink)
    merge_stderr: bool = False
    # Our ends for a Popen's caller.
    parent_stdin: IO[bytes] | None = None
    parent_stdout: IO[bytes] | None = None
    parent_stderr: IO[bytes] | None = None
    close_after: list[int] = field(default_factory=list)
    temp: IO[bytes] | None = None

    def command_io(self) -> CommandIO:
        return CommandIO(stdin=self.stdin, stdout=self.stdout, stderr=self.stderr,
                         interactive=self.interactive)

    @property
    def tty(self) -> TtyFlags:
        stdin = self.stdin is not None and os.isatty(self.stdin)
        stdout = _isatty(self.stdout)
        stderr = stdout if self.merge_stderr else _isatty(self.stderr)
        return TtyFlags(stdin, stdout, stderr)

    @property
    def interactive(self) -> bool:
        return self.tty.interactive

    def spec(self, argv: Sequence[bytes], cwd: bytes | None,
             env: Mapping[bytes, bytes] | None) -> CommandSpec:
        winsize = window_size(self.stdout.fd) if isinstance(self.stdout, FdSink) \
            and self.tty.stdout else None
        return CommandSpec(argv=argv, io=self.command_io(), cwd=cwd, env=env,
                           merge_stderr=self.merge_stderr, tty=self.tty, winsize=winsize)

    def close_child_side(self) -> None:
        for fd in self.close_after:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.close_after.clear()
        if self.temp is not None:
            self.temp.close()
            self.temp = None


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


def _output(spec: File, inherit: int, stdio: Stdio, *, popen: bool,
            is_stderr: bool) -> tuple[Sink, IO[bytes] | None]:
    if spec is None:
        return (FdSink(inherit) if _valid_fd(inherit) else NullSink()), None
    if spec == PIPE:
        if not popen:
            return BufferSink(), None
        read_end, write_end = _pipe()
        # Non-blocking on our side: close() must not hang on a reader that
        # stopped reading.
        os.set_blocking(write_end, False)
        stdio.close_after.append(write_end)
        # The caller's to close, as subprocess's pipes are.
        return FdSink(write_end), open(read_end, "rb")
    if spec == DEVNULL:
        return NullSink(), None
    if spec == STDOUT:
        if not is_stderr:
            raise ValueError("STDOUT is only for stderr")
        stdio.merge_stderr = True
        return NullSink(), None
    if isinstance(spec, int) and spec < 0:
        raise ValueError(f"bad file descriptor {spec}")
    return FdSink(_fd_of(spec)), None


def resolve_stdio(stdin: File, stdout: File, stderr: File, *, input: bytes | None = None,
                  capture_output: bool = False, popen: bool = False) -> Stdio:
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output")
        stdout = stderr = PIPE
    stdio = Stdio()
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used")
        # A file: the session reads it in 4 MiB chunks, with no thread.
        stdio.temp = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close_child_side
        stdio.temp.write(input)
        stdio.temp.seek(0)
        stdio.stdin = stdio.temp.fileno()
    elif stdin is None:
        stdio.stdin = 0 if _valid_fd(0) else None
    elif stdin == PIPE:
        if popen:
            read_end, write_end = _pipe()
            stdio.close_after.append(read_end)
            stdio.stdin = read_end
            stdio.parent_stdin = open(write_end, "wb")  # noqa: SIM115 - the caller's
    elif stdin != DEVNULL:
        if isinstance(stdin, int) and stdin < 0:
            raise ValueError(f"bad file descriptor {stdin}")
        stdio.stdin = _fd_of(stdin)
    stdio.stdout, stdio.parent_stdout = _output(stdout, 1, stdio, popen=popen, is_stderr=False)
    stdio.stderr, stdio.parent_stderr = _output(stderr, 2, stdio, popen=popen, is_stderr=True)
    return stdio


def _captured(sink: Sink) -> bytes | None:
    return bytes(sink.data) if isinstance(sink, BufferSink) else None


# -- run ------------------------------------------------------------------------------------


def relay(guest: Guest, session: CommandSession, interactive: bool, stdin: int | None) -> Result:
    """Drive a session to its end; if we are interrupted (KeyboardInterrupt,
    an error here), the guest is killed: its state is unknown."""
    try:
        with raw_mode(stdin) if interactive and stdin is not None else contextlib.nullcontext():
            result = session.relay()
    except BaseException:
        guest._interrupted(session)
        raise
    guest._end(session, result)
    return result


def run_in(guest: Guest, args: Arg | Sequence[Arg], *, stdin: File, input: bytes | None,
           stdout: File, stderr: File, capture_output: bool, cwd: Arg | None,
           env: Env | None, timeout: float | None, check: bool,
           signals: SignalForwarder | None, last: bool = False,
           deadline: float | None = None) -> CompletedProcess:
    argv = argv_bytes(args)
    stdio = resolve_stdio(stdin, stdout, stderr, input=input, capture_output=capture_output)
    try:
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        spec = stdio.spec(argv, resolve_cwd(cwd) if cwd is not None else None, env_bytes(env))
        session = guest._begin(spec, last=last, signals=signals,
                               limits=SessionLimits(deadline, deadline_kills_guest=last))
        result = relay(guest, session, stdio.interactive, stdio.stdin)
    finally:
        stdio.close_child_side()
    out, err = _captured(stdio.stdout), _captured(stdio.stderr)
    if result.timed_out:
        assert timeout is not None
        raise TimeoutExpired(argv, timeout, output=out, stderr=err,
                             message=_timeout_message(timeout, killed_guest=last))
    returncode, error = returncode_of(result, argv[0])
    for stream, name, sink in ((1, "stdout", stdio.stdout), (2, "stderr", stdio.stderr)):
        if sink.error is not None:
            returncode = ExitCode.UMLROOT
            error = f"could not pass on the command's {name}: {sink.error.strerror}"
        if stream in result.output_lost:
            returncode = ExitCode.UMLROOT
            error = (f"the command's {name} was lost: the guest could not store it in the "
                     f"run directory ({os.strerror(result.output_lost[stream])} in "
                     f"{guest.run_dir.parent}); set TMPDIR to a larger filesystem")
    report = guest._final_report if last else None
    returncode, error = with_delivery(returncode, error, report, guest.lost_writes(report))
    completed = CompletedProcess(args, returncode, out, err, error=error, writeback=report)
    if check:
        completed.check_returncode()
    return completed


def _timeout_message(timeout: float, *, killed_guest: bool) -> str:
    if killed_guest:
        return f"timed out after {timeout:g} s; the guest was stopped and nothing written back"
    return f"timed out after {timeout:g} s; the command was killed"


@contextlib.contextmanager
def maybe_forward(forward: bool) -> Iterator[SignalForwarder | None]:
    if not forward:
        yield None
        return
    with SignalForwarder() as forwarder:
        yield forwarder


def run(args: Arg | Sequence[Arg], *, stdin: File = None, input: bytes | None = None,
        stdout: File = None, stderr: File = None, capture_output: bool = False,
        cwd: Arg | None = None, env: Env | None = None, timeout: float | None = None,
        check: bool = False, forward_signals: bool = False,
        mem: str = "1G", cpus: int = 1, kernel: str | os.PathLike[str] | None = None,
        writable: Sequence[str | os.PathLike[str]] = (), writeback: bool = True,
        state: str | os.PathLike[str] | None = None, state_wait: bool = True,
        disks: Sequence[str | os.PathLike[str]] = (), net: bool = False,
        real_owners: bool = False, keep_scratch: bool = False,
        verbose: bool = False) -> CompletedProcess:
    """Run one command as root in a fresh guest, like `umlroot run`: boot,
    run, write back (if it ran), power off. See docs/api.md."""
    options = GuestOptions(
        mem=mem, cpus=cpus, kernel=Path(kernel) if kernel is not None else None,
        cwd=Path(os.fsdecode(cwd)) if cwd is not None else None,
        writable=tuple(Path(p) for p in writable), writeback=writeback,
        state=Path(state) if state is not None else None, state_wait=state_wait,
        disks=tuple(os.fspath(d) for d in disks), net=net, real_owners=real_owners,
        keep_scratch=keep_scratch, verbose=verbose)
    argv_bytes(args)  # no command: fail before booting
    deadline = time.monotonic() + timeout if timeout is not None else None
    with maybe_forward(forward_signals) as signals:
        try:
            guest = Guest._boot(options, deadline)
        except BootTimeout:
            assert timeout is not None
            raise TimeoutExpired(argv_bytes(args), timeout,
                                 message=_timeout_message(timeout, killed_guest=True)) from None
        try:
            return run_in(guest, args, stdin=stdin, input=input, stdout=stdout, stderr=stderr,
                          capture_output=capture_output, cwd=None, env=env, timeout=timeout,
                          check=check, signals=signals, last=True, deadline=deadline)
        finally:
            guest.kill()


# -- Popen ------------------------------------------------------------------------------------


class Popen:
    """A command running in a Guest, for streaming: like subprocess.Popen
    (stdin/stdout/stderr file objects for PIPE, poll, wait, communicate,
    send_signal, terminate, kill). Its stdio is relayed by a thread."""

    def __init__(self, guest: Guest, args: Arg | Sequence[Arg], *, stdin: File = None,
                 stdout: File = None, stderr: File = None, cwd: Arg | None = None,
                 env: Env | None = None) -> None:
        self.args = args
        self._argv = argv_bytes(args)
        self._guest = guest
        self.returncode: int | None = None
        self.error: str | None = None
        self._exception: BaseException | None = None
        stdio = resolve_stdio(stdin, stdout, stderr, popen=True)
        self._stdio = stdio
        self.stdin, self.stdout, self.stderr = (stdio.parent_stdin, stdio.parent_stdout,
                                                stdio.parent_stderr)
        try:
            spec = stdio.spec(self._argv, resolve_cwd(cwd) if cwd is not None else None,
                              env_bytes(env))
            self._session = guest._begin(spec, last=False, limits=SessionLimits(),
                                         signals=None)
        except BaseException:
            stdio.close_child_side()
            self._close_parent_side()
            raise
        self._thread = threading.Thread(target=self._relay, name="umlroot-relay", daemon=True)
        guest._busy_thread = self._thread
        self._thread.start()

    def _relay(self) -> None:
        try:
            result = relay(self._guest, self._session, self._stdio.interactive,
                           self._stdio.stdin)
            self.returncode, self.error = returncode_of(result, self._argv[0])
        except BaseException as error:  # noqa: BLE001 - handed to wait()
            self._exception = error
            self.returncode = ExitCode.UMLROOT
        finally:
            # EOF for our readers.
            self._stdio.close_child_side()

    def _close_parent_side(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def poll(self) -> int | None:
        if self._thread.is_alive():
            return None
        return self._final()

    def _final(self) -> int:
        if self._exception is not None:
            raise self._exception
        assert self.returncode is not None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            assert timeout is not None
            raise TimeoutExpired(self._argv, timeout)
        return self._final()

    def communicate(self, input: bytes | None = None,
                    timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        """Send input, read stdout/stderr to their ends, wait."""
        collected: dict[str, bytes] = {}
        workers: list[threading.Thread] = []

        def feed() -> None:
            assert self.stdin is not None
            with contextlib.suppress(BrokenPipeError, ValueError):
                if input:
                    self.stdin.write(input)
                self.stdin.close()

        def drain(name: str, stream: IO[bytes]) -> None:
            collected[name] = stream.read()
            stream.close()

        if self.stdin is not None:
            workers.append(threading.Thread(target=feed, daemon=True))
        for name, stream in (("stdout", self.stdout), ("stderr", self.stderr)):
            if stream is not None and not stream.closed:
                workers.append(threading.Thread(target=drain, args=(name, stream), daemon=True))
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + timeout if timeout is not None else None
        for worker in workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                assert timeout is not None
                raise TimeoutExpired(self._argv, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return collected.get("stdout"), collected.get("stderr")

    def send_signal(self, sig: int) -> None:
        """Signal the command's process group (ignored once it has exited)."""
        if self._thread.is_alive() and self._session.result.outcome is None:
            self._guest.channel.send(f"k {int(sig)}")

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
        try:
            self.wait()
        except GuestError:
            if _exc[0] is None:
                raise
