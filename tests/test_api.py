"""The Python API: `umlroot.run()` and `umlroot.Guest`, real boots.

The first part mirrors tests/test_run.py (the CLI's contract) through the API;
the second covers what only a persistent guest has."""

from __future__ import annotations

import gc
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_no_leftovers, uml_processes

import umlroot
from umlroot.guest.scratch import find_tool

pytestmark = pytest.mark.uml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Run directories go to a fresh TMPDIR, so a test can see that nothing
    was left behind in it."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    yield {**os.environ, "TMPDIR": str(tmpdir)}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The commands' working directory (and writeback scope)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


# -- umlroot.run(): what `umlroot run` does ---------------------------------------------


def test_runs_as_root_with_bytes_argv_env_and_cwd(work: Path) -> None:
    args = [b"two words", b"new\nline", b"\xff\xfe not utf-8", b""]
    result = umlroot.run(["sh", "-c", 'printf "%s\\0" "$@"; id -u; pwd; echo "$X/$UMLROOT"',
                          "sh", *args], cwd=work, env={"X": "from-env", "PATH": "/usr/bin:/bin"},
                         capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(a + b"\0" for a in args) + \
        b"0\n" + os.fsencode(work) + b"\nfrom-env/1\n"
    assert isinstance(result, subprocess.CompletedProcess)


@pytest.mark.parametrize(("script", "status"), [("exit 7", 7), ("exit 0", 0),
                                                ("kill -TERM $$", 143), ("kill -KILL $$", 137)])
def test_exit_status(work: Path, script: str, status: int) -> None:
    assert umlroot.run(["sh", "-c", script], cwd=work).returncode == status


def test_not_found_and_not_executable(work: Path) -> None:
    (work / "script").write_text("#!/bin/sh\necho hi\n")
    missing = umlroot.run(["nosuchcmd"], cwd=work, capture_output=True)
    assert (missing.returncode, missing.error, missing.stderr) == (
        127, "nosuchcmd: command not found", b"")
    denied = umlroot.run(["./script"], cwd=work)
    assert denied.returncode == 126
    assert denied.error is not None and denied.error.startswith("./script: cannot execute:")


def test_check_raises_both_hierarchies(work: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as caught:
        umlroot.run(["sh", "-c", "echo out; exit 3"], cwd=work, capture_output=True, check=True)
    assert isinstance(caught.value, umlroot.CalledProcessError)
    assert (caught.value.returncode, caught.value.output, caught.value.exit_code) == (3, b"out\n", 3)


def test_stdout_byte_exact_and_stderr_separate(work: Path) -> None:
    script = "head -c 64M /dev/urandom | tee /dev/fd/3 | sha256sum >&2; echo err >&2"
    result = umlroot.run(["sh", "-c", f"{{ {script}; }} 3>&1"], cwd=work, capture_output=True)
    assert len(result.stdout) == 64 << 20
    digest, _, err = result.stderr.partition(b" ")
    assert digest.decode() == hashlib.sha256(result.stdout).hexdigest()
    assert err.endswith(b"\nerr\n")


def test_stderr_to_stdout_keeps_the_order(work: Path) -> None:
    result = umlroot.run(["sh", "-c", "echo 1; echo 2 >&2; echo 3; echo 4 >&2"], cwd=work,
                         stdout=umlroot.PIPE, stderr=umlroot.STDOUT)
    assert (result.stdout, result.stderr) == (b"1\n2\n3\n4\n", None)


def test_stdin_input_file_and_devnull(work: Path) -> None:
    data = os.urandom(8 << 20) + b"\0end"
    result = umlroot.run(["sha256sum"], cwd=work, input=data, capture_output=True)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    (work / "in").write_bytes(b"a\0b")
    with open(work / "in", "rb") as stdin, open(work / "out", "wb") as stdout:
        assert umlroot.run(["od", "-c"], cwd=work, stdin=stdin, stdout=stdout).returncode == 0
    assert (work / "out").read_bytes().split(b"\n")[0].split() == [b"0000000", b"a", b"\\0", b"b"]
    empty = umlroot.run(["cat"], cwd=work, stdin=umlroot.DEVNULL, capture_output=True)
    assert (empty.returncode, empty.stdout) == (0, b"")


def test_timeout_stops_the_guest_and_writes_nothing_back(
        work: Path, in_private_tmp: dict[str, str]) -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        umlroot.run(["sh", "-c", "echo x > late; sleep 60"], cwd=work, timeout=2)
    assert isinstance(caught.value, umlroot.TimeoutExpired)
    assert caught.value.exit_code == umlroot.ExitCode.TIMEOUT
    assert time.monotonic() - started < 20
    assert not (work / "late").exists()
    assert_no_leftovers(in_private_tmp)


def test_forwarded_signal_reaches_the_command(work: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    read_end, write_end = os.pipe()
    seen = bytearray()

    def interrupt_when_ready() -> None:
        with open(read_end, "rb", buffering=0) as stream:
            while b"ready\n" not in seen:
                byte = stream.read(1)
                if not byte:
                    return  # the command ended before it was ready: the asserts say so
                seen.extend(byte)
            os.kill(os.getpid(), signal.SIGINT)
            seen.extend(stream.read())

    watcher = threading.Thread(target=interrupt_when_ready)
    watcher.start()
    try:
        result = umlroot.run(["sh", "-c", ('trap "echo caught; exit 3" INT; echo ready; '
                              "sleep 30 & wait")], cwd=work, forward_signals=True,
                             stdout=write_end, timeout=60)
    finally:
        os.close(write_end)
        watcher.join()
    assert (result.returncode, bytes(seen)) == (3, b"ready\ncaught\n")
    assert signal.getsignal(signal.SIGINT) == before  # restored


def test_writeback_and_its_report(work: Path) -> None:
    result = umlroot.run(["sh", "-c", "echo hi > made && mknod dev c 1 3"], cwd=work)
    assert (work / "made").read_text() == "hi\n"
    assert not (work / "dev").exists()
    assert result.writeback is not None
    assert (result.writeback.count("files"), result.writeback.count("devices")) == (1, 1)
    assert umlroot.run(["sh", "-c", "echo x > none"], cwd=work, writeback=False).writeback is None
    assert not (work / "none").exists()


def test_guest_crash_is_a_guest_error(work: Path, in_private_tmp: dict[str, str]) -> None:
    with pytest.raises(umlroot.GuestError) as caught:
        umlroot.run(["sh", "-c", "echo x > f; echo c > /proc/sysrq-trigger; sleep 10"], cwd=work)
    assert caught.value.message == "the guest crashed while running the command"
    assert caught.value.exit_code == umlroot.ExitCode.UMLROOT
    assert not (work / "f").exists()
    assert_no_leftovers(in_private_tmp)


def test_state_is_shared_with_the_cli_and_locked(work: Path) -> None:
    state = work.parent / "pkg.state"
    with umlroot.Guest(cwd=work, state=state) as guest:
        guest.run(["sh", "-c", "mknod null c 1 3 && chown 7:8 null"], check=True)
        with pytest.raises(umlroot.UmlrootError, match="in use by another umlroot run"):
            umlroot.run(["true"], cwd=work, state=state, state_wait=False)
    result = umlroot.run(["stat", "-c", "%u:%g %t,%T", "null"], cwd=work, state=state,
                         capture_output=True)
    assert result.stdout == b"7:8 1,3\n"


def test_bad_options_fail_before_booting(work: Path) -> None:
    with pytest.raises(umlroot.UmlrootError, match="--writable .*: not a directory"):
        umlroot.run(["true"], cwd=work, writable=[work / "missing"])
    with pytest.raises(ValueError, match="no command"):
        umlroot.run([], cwd=work)


# -- umlroot.Guest: one boot, many commands ---------------------------------------------------


def test_a_mount_persists_into_the_next_command(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        guest.run(["sh", "-c", ("mkdir -p /mnt/t && mount -t tmpfs scratch /mnt/t && "
                   "echo kept > /mnt/t/f")], check=True)
        result = guest.run(["sh", "-c", "cat /mnt/t/f; grep -c ' /mnt/t tmpfs' /proc/mounts"],
                           capture_output=True)
    assert result.stdout == b"kept\n1\n"


def test_an_image_mounted_across_commands_is_clean_after_close(work: Path) -> None:
    image = work / "fs.img"
    with umlroot.Guest(cwd=work, disks=[f"{image}:32M:name=fs"]) as guest:
        assert guest.disks == {"fs": "/dev/disk/by-umlroot/fs"}
        guest.run(["sh", "-c", ('mkfs.ext4 -q "$UMLROOT_DISK_FS" && mkdir -p /mnt/fs && '
                   'mount "$UMLROOT_DISK_FS" /mnt/fs')], check=True)
        guest.run(["sh", "-c", "echo data > /mnt/fs/file && mknod /mnt/fs/null c 1 3"],
                  check=True)
        # Left mounted: close() unmounts it before powering off.
    e2fsck = find_tool("e2fsck")
    assert e2fsck is not None
    check = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    debugfs = subprocess.run([find_tool("debugfs") or "debugfs", "-R", "cat /file", str(image)],
                             capture_output=True, check=True)
    assert debugfs.stdout == b"data\n"


def test_a_hundred_commands_in_one_guest(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        outputs = [guest.run(["echo", str(i)], capture_output=True).stdout for i in range(100)]
    assert outputs == [f"{i}\n".encode() for i in range(100)]


def test_background_processes_do_not_outlive_their_command(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        started = guest.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                            capture_output=True)
        pid = started.stdout.strip().decode()
        later = guest.run(["sh", "-c", f"test -e /proc/{pid} && echo alive || echo gone"],
                          capture_output=True)
    assert later.stdout == b"gone\n"


def test_timeout_kills_the_command_not_the_guest(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        started = time.monotonic()
        with pytest.raises(umlroot.TimeoutExpired) as caught:
            guest.run(["sh", "-c", "echo partial; trap '' TERM INT; sleep 60"], timeout=3,
                      capture_output=True)
        assert time.monotonic() - started < 15
        assert caught.value.output == b"partial\n"
        assert guest.run(["echo", "still here"], capture_output=True).stdout == b"still here\n"


def test_popen_streams_and_takes_signals(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        proc = guest.popen(["sh", "-c", ('trap "echo caught; exit 3" TERM; echo started; '
                            "while :; do sleep 0.1; done")], stdout=umlroot.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        assert proc.poll() is None
        with pytest.raises(umlroot.GuestBusyError):
            guest.run(["true"])
        proc.terminate()
        assert proc.wait(timeout=30) == 3
        assert proc.stdout.read() == b"caught\n"
        proc.stdout.close()
        with guest.popen(["cat"], stdin=umlroot.PIPE, stdout=umlroot.PIPE,
                         stderr=umlroot.PIPE) as cat:
            data = os.urandom(3 << 20)
            out, err = cat.communicate(data)
        assert (out, err, cat.returncode) == (data, b"", 0)


def test_a_hanging_command_does_not_block_close(work: Path, in_private_tmp: dict[str, str]) -> None:
    guest = umlroot.Guest(cwd=work)
    proc = guest.popen(["sh", "-c", ("trap '' TERM INT HUP; echo x > written; echo started; "
                        "sleep 1000")], stdout=umlroot.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    started = time.monotonic()
    guest.close()
    assert time.monotonic() - started < 15
    assert proc.wait(timeout=5) == 128 + signal.SIGKILL
    assert (work / "written").read_text() == "x\n"  # killed like by a signal: written back
    proc.stdout.close()
    assert_no_leftovers(in_private_tmp)


def test_writeback_on_demand_and_again_at_close(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        guest.run(["sh", "-c", "echo 1 > a"], check=True)
        assert not (work / "a").exists()  # not before writeback
        report = guest.writeback()
        assert report is not None and report.count("files") == 1
        assert (work / "a").read_text() == "1\n"
        (work / "host-made").write_text("host\n")
        guest.run(["sh", "-c", "echo 2 >> a; echo 3 > b"], check=True)
        final = guest.close()
    assert ((work / "a").read_text(), (work / "b").read_text()) == ("1\n2\n", "3\n")
    assert final is not None and final.count("conflicts") == 0
    assert (work / "host-made").read_text() == "host\n"


def test_host_change_after_a_writeback_is_a_conflict(work: Path) -> None:
    with umlroot.Guest(cwd=work) as guest:
        guest.run(["sh", "-c", "echo guest > f"], check=True)
        guest.writeback()
        time.sleep(0.05)
        (work / "f").write_text("host edit\n")
        guest.run(["sh", "-c", "echo guest again > f"], check=True)
        final = guest.close()
    assert (work / "f").read_text() == "host edit\n"
    assert final is not None and final.count("conflicts") == 1


def test_an_exception_in_the_block_writes_nothing_back(work: Path,
                                                       in_private_tmp: dict[str, str]) -> None:
    with pytest.raises(KeyboardInterrupt), umlroot.Guest(cwd=work) as guest:
        guest.run(["sh", "-c", "echo x > f"], check=True)
        raise KeyboardInterrupt
    assert not (work / "f").exists()
    assert not guest.alive
    assert_no_leftovers(in_private_tmp)


def test_interrupted_while_a_command_runs(work: Path, in_private_tmp: dict[str, str]) -> None:
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        guest = umlroot.Guest(cwd=work)
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            guest.run(["sh", "-c", "echo x > f; sleep 60"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(umlroot.GuestClosedError):
        guest.run(["true"])
    assert guest.close() is None
    assert not (work / "f").exists()
    assert_no_leftovers(in_private_tmp)


def test_garbage_collection_leaves_nothing(work: Path, in_private_tmp: dict[str, str]) -> None:
    guest = umlroot.Guest(cwd=work)
    guest.run(["sh", "-c", "echo x > f"], check=True)
    assert uml_processes(in_private_tmp["TMPDIR"])
    del guest
    gc.collect()
    assert not (work / "f").exists()
    assert_no_leftovers(in_private_tmp)


def test_parent_killed_takes_the_guest_with_it(work: Path, in_private_tmp: dict[str, str]) -> None:
    script = ("import sys, umlroot; g = umlroot.Guest(); g.run(['true']); "
              "print('ready', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=work, env=in_private_tmp,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    assert uml_processes(in_private_tmp["TMPDIR"])
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while uml_processes(in_private_tmp["TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uml_processes(in_private_tmp["TMPDIR"]) == []
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdout.close()


def test_a_guest_outlives_the_thread_that_made_it(work: Path) -> None:
    made: list[umlroot.Guest] = []
    maker = threading.Thread(target=lambda: made.append(umlroot.Guest(cwd=work)))
    maker.start()
    maker.join()
    with made[0] as guest:
        time.sleep(0.5)  # PDEATHSIG would have killed UML by now
        assert guest.run(["echo", "alive"], capture_output=True).stdout == b"alive\n"


def test_closed_and_dead_guests_raise(work: Path, in_private_tmp: dict[str, str]) -> None:
    guest = umlroot.Guest(cwd=work)
    guest.close()
    guest.close()  # again: harmless
    for call in (lambda: guest.run(["true"]), lambda: guest.popen(["true"]), guest.writeback):
        with pytest.raises(umlroot.GuestClosedError, match="the guest is closed"):
            call()
    crashed = umlroot.Guest(cwd=work)
    with pytest.raises(umlroot.GuestError, match="crashed"):
        crashed.run(["sh", "-c", "echo x > f; echo c > /proc/sysrq-trigger; sleep 10"])
    with pytest.raises(umlroot.GuestClosedError, match="the guest is gone"):
        crashed.run(["true"])
    crashed.close()
    assert not (work / "f").exists()
    assert_no_leftovers(in_private_tmp)


def test_two_guests_at_once(work: Path, in_private_tmp: dict[str, str]) -> None:
    with umlroot.Guest(cwd=work) as first, umlroot.Guest(cwd=work, writeback=False) as second:
        first.run(["sh", "-c", "echo first > /etc/which"], check=True)
        second.run(["sh", "-c", "echo second > /etc/which"], check=True)
        slow = first.popen(["sh", "-c", "sleep 1; cat /etc/which"], stdout=umlroot.PIPE)
        assert second.run(["cat", "/etc/which"], capture_output=True).stdout == b"second\n"
        out, _ = slow.communicate(timeout=60)
        assert out == b"first\n"
    assert_no_leftovers(in_private_tmp)


def test_net_serves_every_command_of_a_guest(work: Path, in_private_tmp: dict[str, str]) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_twice() -> None:
        for _ in range(2):
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"hello from the host")

    answering = threading.Thread(target=answer_twice, daemon=True)
    answering.start()
    fetch = ["python3", "-c", ("import socket; "
             f"print(socket.create_connection(('10.0.2.2', {port})).recv(100).decode())")]
    try:
        with umlroot.Guest(cwd=work, net=True) as guest:
            for _ in range(2):
                result = guest.run(fetch, capture_output=True, timeout=60)
                assert result.stdout == b"hello from the host\n", result.stderr
    finally:
        server.close()
    offline = umlroot.run(["test", "-e", "/sys/class/net/eth0"], cwd=work)
    assert offline.returncode == 1  # net=False is the default
    assert_no_leftovers(in_private_tmp)


# -- docs/api.md --------------------------------------------------------------------------------------


def api_examples() -> list[str]:
    text = (REPO / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("example", api_examples(),
                         ids=lambda code: code.splitlines()[-1].strip()[:40])
def test_docs_examples_run_verbatim(example: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def test_docs_have_examples() -> None:
    assert len(api_examples()) >= 4
