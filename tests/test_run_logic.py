"""Unit tests (no boot) for the pure logic behind `umlroot run`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from umlroot.guest.diagnose import FailureContext, guest_failure, seccomp_refused
from umlroot.errors import ExitCode, UmlrootError
from umlroot.cli.fakeroot_state import copy_sparse, shell_command
from umlroot.guest.command import command_env, needs_host_tmp, root_path, writeback_scopes
from umlroot.guest.machine import ChannelFds, MachineSpec, UbdDisk, kernel_command_line
from umlroot.guest.process import returncode_of
from umlroot.guest.request import CommandRequest, DiskLink, MachineRequest, TtyFlags
from umlroot.guest.session import Outcome, Result


def parse_records(data: bytes) -> list[tuple[bytes, bytes]]:
    fields = data.split(b"\0")
    assert fields[-1] == b""
    return list(zip(fields[0:-1:2], fields[1:-1:2]))


def test_request_encodes_bytes_unchanged() -> None:
    command = CommandRequest(argv=[b"printf", b"a b\n\xff"], env={b"K": b"v=w"}, cwd=b"/x y",
                             umask=0o027, tty=TtyFlags(False, True, False), winsize=(24, 80),
                             merge_stderr=True)
    records = parse_records(command.encode())
    assert records[:3] == [(b"arg", b"printf"), (b"arg", b"a b\n\xff"), (b"env", b"K=v=w")]
    as_dict = dict(records)
    assert as_dict[b"umask"] == b"27"
    assert as_dict[b"tty"] == b"010"
    assert as_dict[b"winsize"] == b"24 80"
    assert as_dict[b"merge-stderr"] == b"1"
    machine = dict(parse_records(MachineRequest(
        scopes=[b"/x y"], start_ns=1_500_000_000, host_uid=1000, host_gid=100,
        disks=[DiskLink("ubdb", "img")]).encode()))
    assert machine[b"t0"] == b"1.500000000"
    assert machine[b"disk"] == b"ubdb img"
    assert machine[b"scope"] == b"/x y"


def test_request_refuses_nul() -> None:
    request = CommandRequest(argv=[b"a\0b"], env={}, cwd=b"/", umask=0,
                             tty=TtyFlags(False, False, False))
    with pytest.raises(ValueError):
        request.encode()


def test_root_path_appends_missing_sbin_dirs() -> None:
    assert root_path(b"/usr/bin:/bin") == b"/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    full = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert root_path(full) == full


def test_command_env_adds_what_every_command_sees() -> None:
    env = command_env({b"PATH": b"/bin", b"A": b"1"}, {b"UMLROOT_DISK_IMG": b"/dev/ubdb"})
    assert env == {b"PATH": b"/bin:/usr/local/sbin:/usr/sbin:/sbin", b"A": b"1",
                   b"UMLROOT_DISK_IMG": b"/dev/ubdb", b"UMLROOT": b"1"}


def test_writeback_scopes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cwd = os.fsencode(tmp_path / "sub")
    assert writeback_scopes(True, [tmp_path, tmp_path / "sub"], cwd) == [os.fsencode(tmp_path)]
    assert writeback_scopes(False, [tmp_path], cwd) == []
    with pytest.raises(UmlrootError):
        writeback_scopes(True, [tmp_path / "missing"], cwd)


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


@pytest.mark.parametrize(("result", "status", "message"), [
    (Result(outcome=Outcome.EXITED, value=7), 7, None),
    (Result(outcome=Outcome.SIGNALED, value=2), 130, None),
    (Result(outcome=Outcome.NOT_FOUND, value=2), ExitCode.NOT_FOUND, "cmd: command not found"),
    (Result(outcome=Outcome.NOT_EXECUTABLE, value=13), ExitCode.CANNOT_EXECUTE,
     "cmd: cannot execute: Permission denied"),
    (Result(outcome=Outcome.NO_CWD, value=2), ExitCode.UMLROOT,
     "cannot enter the working directory in the guest: No such file or directory"),
    (Result(killed_by=15), 143, None),
])
def test_returncode_is_the_clis_exit_status(result: Result, status: int,
                                            message: str | None) -> None:
    assert returncode_of(result, b"cmd") == (status, message)


def test_guest_failures_are_umlroot_errors_with_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "log"
    log_file.write_text("line 1\nKernel panic - not syncing\n")
    error = guest_failure("the guest crashed", FailureContext(log_file))
    assert isinstance(error, UmlrootError)
    assert error.exit_code == ExitCode.UMLROOT
    assert "Kernel panic" in (error.details or "")


def test_memory_failure_is_one_line_naming_size_and_place(tmp_path: Path) -> None:
    """Under `quiet` the log does not name the memory file's directory: the
    runner knows it (the kernel has no memfd patch)."""
    log_file = tmp_path / "log"
    log_file.write_text("Bus error - the host /dev/shm or /tmp mount likely just ran out of "
                        "space\nKernel panic - not syncing: Kernel mode signal 7\n")
    error = guest_failure("the guest crashed", FailureContext(log_file, "2G", str(tmp_path)))
    assert error.exit_code == ExitCode.UMLROOT and error.details is None
    assert error.message.startswith(f"the guest's memory (2G) could not be had: UML maps it "
                                    f"from a file in {tmp_path} (")
    assert "SIGBUS" in error.message and "\n" not in error.message
    assert error.hint and "UMLROOT_MEMDIR" in error.hint


def test_seccomp_failure_is_recognised(tmp_path: Path) -> None:
    log_file = tmp_path / "log"
    log_file.write_text("Checking that seccomp filters can be installed...\n"
                        "SECCOMP userspace requested but not functional!\n")
    assert seccomp_refused(log_file)
    log_file.write_text("Kernel panic\n")
    assert not seccomp_refused(log_file)


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
    caught = guest_failure("the guest failed to start: the guest stopped before it was ready",
                           FailureContext(log_file, "1G", missing))
    assert caught.message == (f"the guest's memory (1G) could not be had: UML maps it "
                              f"from a file in {missing}, which refuses it (No such "
                              "file or directory)")
    # A usable directory explains nothing: the generic error and the log stay.
    generic = guest_failure("the guest failed to start: mount: EIO",
                            FailureContext(log_file, "1G", str(tmp_path)))
    assert generic.message == "the guest failed to start: mount: EIO"
