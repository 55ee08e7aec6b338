"""A fake UML for unit tests of the guest and session logic: a starter whose
"kernel" is a thread that speaks the guest init's control protocol
(READY, r N, EXIT, W/WBDONE, q/DONE) instead of booting anything."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path


class FakeUml:
    """The started "kernel": answers control lines until powered off."""

    def __init__(self, argv: Sequence[str], script: FakeScript) -> None:
        channel = next(a for a in argv if a.startswith("con1="))
        reads, writes = (int(n) for n in re.findall(r"fd:(\d+)", channel))
        self.from_host = os.dup(reads)
        self.to_host = os.dup(writes)
        run_hex = next(a for a in argv if a.startswith("umlroot_run="))
        self.run_dir = Path(os.fsdecode(bytes.fromhex(run_hex.split("=", 1)[1])))
        self.script = script
        self.argv = list(argv)
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _say(self, line: str) -> None:
        os.write(self.to_host, line.encode() + b"\n")

    def _serve(self) -> None:
        if self.script.boot_error is not None:
            self._say(f"ERR {self.script.boot_error}")
            self._exit(1)
            return
        self._say("READY 10 20")
        buffer = b""
        while self.returncode is None:
            try:
                data = os.read(self.from_host, 4096)
            except OSError:
                return
            if not data:
                self._exit(0)
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.script.seen.append(line.decode())
                self._handle(line.decode())

    def _handle(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "r":
            number, _, last = rest.partition(" ")
            if self.script.crash_in_command:
                self._exit(134)
                return
            (self.run_dir / f"c{number}" / "out.1").write_bytes(self.script.stdout)
            self._say(f"EXIT exit {self.script.status}")
            if last == "last":
                self._write_back()
                self._say("DONE")
                self._exit(0)
        elif kind == "W" and not self.script.hang_writeback:
            self._write_back()
            self._say("WBDONE")
        elif kind == "q" and not self.script.hang_writeback:
            self._write_back()
            self._say("DONE")
            self._exit(0)

    def _write_back(self) -> None:
        if self.script.lost is not None:
            self._say(f"LOST {self.script.lost}")
            self._say("WB lost")
        else:
            self._say("WB none")

    def _exit(self, status: int) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            self.returncode = status
            # What the host sees when UML exits: EOF on the channel.
            for fd in (self.to_host, self.from_host):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.thread.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        return self.returncode

    def kill_group(self) -> None:
        self._exit(-9)


class FakeScript:
    """What the fake guest does, and what it was told."""

    def __init__(self, *, stdout: bytes = b"", status: int = 0,
                 boot_error: str | None = None, crash_in_command: bool = False,
                 hang_writeback: bool = False, lost: str | None = None) -> None:
        self.stdout = stdout
        self.status = status
        self.boot_error = boot_error
        self.crash_in_command = crash_in_command
        self.hang_writeback = hang_writeback
        self.lost = lost  # a LOST line's words: the guest lost writes
        self.seen: list[str] = []
        self.started: list[FakeUml] = []


class FakeStarter:
    def __init__(self, script: FakeScript) -> None:
        self.script = script

    def start(self, argv: Sequence[str], *, output: int,
              pass_fds: Sequence[int] = ()) -> FakeUml:
        uml = FakeUml(argv, self.script)
        self.script.started.append(uml)
        return uml
