"""Unit tests (no boot) for the pure logic behind `umlroot run`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from umlroot.errors import ExitCode, UmlrootError
from umlroot.fakeroot import copy_sparse, shell_command
from umlroot.machine import ChannelFds, MachineSpec, UbdDisk, kernel_command_line
from umlroot.request import DiskLink, Request, TtyFlags
from umlroot.runner import (
    FailureContext,
    RunOptions,
    exit_status,
    needs_host_tmp,
    root_path,
    seccomp_failed,
    writeback_scopes,
)
from umlroot.session import Outcome, Result


def parse_records(data: bytes) -> list[tuple[bytes, bytes]]:
    fields = data.split(b"\0")
    assert fields[-1] == b""
    return list(zip(fields[0:-1:2], fields[1:-1:2]))


def test_request_encodes_bytes_unchanged() -> None:
    request = Request(argv=[b"printf", b"a b\n\xff"], env={b"K": b"v=w"}, cwd=b"/x y",
                      umask=0o027, tty=TtyFlags(False, True, False), winsize=(24, 80),
                      scopes=[b"/x y"], start_ns=1_500_000_000, host_uid=1000, host_gid=100,
                      disks=[DiskLink("ubdb", "img")])
    records = parse_records(request.encode())
    assert records[:3] == [(b"arg", b"printf"), (b"arg", b"a b\n\xff"), (b"env", b"K=v=w")]
    as_dict = dict(records)
    assert as_dict[b"umask"] == b"27"
    assert as_dict[b"tty"] == b"010"
    assert as_dict[b"winsize"] == b"24 80"
    assert as_dict[b"t0"] == b"1.500000000"
    assert as_dict[b"disk"] == b"ubdb img"


def test_request_refuses_nul() -> None:
    request = Request(argv=[b"a\0b"], env={}, cwd=b"/", umask=0, tty=TtyFlags(False, False, False))
    with pytest.raises(ValueError):
        request.encode()


def test_root_path_appends_missing_sbin_dirs() -> None:
    assert root_path(b"/usr/bin:/bin") == b"/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    full = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert root_path(full) == full


def test_writeback_scopes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cwd = os.fsencode(tmp_path / "sub")
    options = RunOptions(argv=[b"true"], writable=[tmp_path, tmp_path / "sub"])
    assert writeback_scopes(options, cwd) == [os.fsencode(tmp_path)]
    assert writeback_scopes(RunOptions(argv=[b"true"], writeback=False), cwd) == []
    with pytest.raises(UmlrootError):
        writeback_scopes(RunOptions(argv=[b"true"], writable=[tmp_path / "missing"]), cwd)


def test_kernel_command_line_is_a_list_with_hex_run_dir() -> None:
    spec = MachineSpec(kernel=Path("/k/linux"), init=Path("/c/init"), run_dir=Path("/tmp/r un"),
                       disks=[UbdDisk(Path("/tmp/s.img")), UbdDisk(Path("/d.img"), read_only=True)],
                       cpus=4)
    argv = kernel_command_line(spec, ChannelFds(5, 6))
    assert argv[0] == "/k/linux"
    assert f"umlroot_run={b'/tmp/r un'.hex()}" in argv
    assert {"seccomp=on", "ncpus=4", "con1=fd:5,fd:6", "ubd0d=/tmp/s.img", "ubd1rd=/d.img"} <= set(argv)
    ptrace = kernel_command_line(MachineSpec(kernel=Path("/k"), init=Path("/i"), run_dir=Path("/r"),
                                             disks=[], cpus=4, seccomp=False), ChannelFds(5, 6))
    assert not any(a.startswith(("seccomp=", "ncpus=")) for a in ptrace)


def done(outcome: Outcome, value: int) -> Result:
    return Result(outcome=outcome, value=value, done=True)


@pytest.mark.parametrize(("result", "status"), [
    (done(Outcome.EXITED, 7), 7),
    (done(Outcome.SIGNALED, 2), 130),
    (done(Outcome.NOT_FOUND, 2), ExitCode.NOT_FOUND),
    (done(Outcome.NOT_EXECUTABLE, 13), ExitCode.CANNOT_EXECUTE),
    (Result(timed_out=True), ExitCode.TIMEOUT),
    (Result(killed_by=15), 143),
])
def test_exit_status(result: Result, status: int, tmp_path: Path) -> None:
    assert exit_status(result, "cmd", b"/", FailureContext(tmp_path / "log"), 1.0) == status


@pytest.mark.parametrize("result", [Result(), Result(boot_error="mount: EIO"),
                                    Result(outcome=Outcome.EXITED)])
def test_guest_failures_are_umlroot_errors(result: Result, tmp_path: Path) -> None:
    log_file = tmp_path / "log"
    log_file.write_text("line 1\nKernel panic - not syncing\n")
    with pytest.raises(UmlrootError) as caught:
        exit_status(result, "cmd", b"/", FailureContext(log_file), None)
    assert caught.value.exit_code == ExitCode.UMLROOT
    assert "Kernel panic" in (caught.value.details or "")


def test_memory_failure_is_one_line_naming_size_and_place(tmp_path: Path) -> None:
    """Under `quiet` the log does not name the memory file's directory: the
    runner knows it (the kernel has no memfd patch)."""
    log_file = tmp_path / "log"
    log_file.write_text("Bus error - the host /dev/shm or /tmp mount likely just ran out of "
                        "space\nKernel panic - not syncing: Kernel mode signal 7\n")
    with pytest.raises(UmlrootError) as caught:
        exit_status(Result(), "cmd", b"/", FailureContext(log_file, "2G", str(tmp_path)), None)
    error = caught.value
    assert error.exit_code == ExitCode.UMLROOT and error.details is None
    assert error.message.startswith(f"the guest's memory (2G) could not be had: UML maps it "
                                    f"from a file in {tmp_path} (")
    assert "SIGBUS" in error.message and "\n" not in error.message
    assert error.hint and "UMLROOT_MEMDIR" in error.hint


def test_seccomp_failure_is_recognised(tmp_path: Path) -> None:
    log_file = tmp_path / "log"
    log_file.write_text("Checking that seccomp filters can be installed...\n"
                        "SECCOMP userspace requested but not functional!\n")
    assert seccomp_failed(Result(), log_file)
    assert not seccomp_failed(Result(outcome=Outcome.EXITED), log_file)
    log_file.write_text("Kernel panic\n")
    assert not seccomp_failed(Result(), log_file)


def test_host_tmp_when_a_scope_reaches_into_it() -> None:
    assert not needs_host_tmp(b"/home/u/src", [b"/home/u/src"])
    assert needs_host_tmp(b"/tmp/x", [b"/tmp/x"])
    assert needs_host_tmp(b"/home/u/src", [b"/"])  # umlroot fakeroot, --writable /
    assert needs_host_tmp(b"/home/u/src", [b"/home/u/src", b"/tmp/out"])
    assert not needs_host_tmp(b"/home/u/src", [b"/tmpfoo"])


def test_fakeroot_runs_the_users_shell_without_a_command() -> None:
    assert shell_command({b"SHELL": b"/bin/zsh"}) == [b"/bin/zsh"]
    assert shell_command({}) == [b"/bin/sh"]
    assert shell_command({b"SHELL": b""}) == [b"/bin/sh"]


def test_copy_sparse_keeps_holes_and_content(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
        f.seek((64 << 20) - 3)
        f.write(b"end")
    copy_sparse(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks <= src.stat().st_blocks


def test_silent_uml_exit_is_explained_by_trying_the_memory_dir(tmp_path: Path) -> None:
    """Under `quiet`, UML exits without a word when it cannot make its memory
    file: the runner tries the directory itself."""
    log_file = tmp_path / "log"
    log_file.write_text("")
    missing = str(tmp_path / "missing")
    with pytest.raises(UmlrootError) as caught:
        exit_status(Result(boot_error="the guest stopped before it was ready"), "cmd", b"/",
                    FailureContext(log_file, "1G", missing), None)
    assert caught.value.message == (f"the guest's memory (1G) could not be had: UML maps it "
                                    f"from a file in {missing}, which refuses it (No such "
                                    "file or directory)")
    # A usable directory explains nothing: the generic error and the log stay.
    with pytest.raises(UmlrootError) as generic:
        exit_status(Result(boot_error="mount: EIO"), "cmd", b"/",
                    FailureContext(log_file, "1G", str(tmp_path)), None)
    assert generic.value.message == "the guest failed to start: mount: EIO"
