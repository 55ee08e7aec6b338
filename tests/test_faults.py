"""Fault injection: a fault never passes as success.

Each test makes one thing go wrong on the host side (a full filesystem under
the scratch disk, the destination, a --disk image or a --state file; a
read-only destination; a host file changed during the run; the UML process
killed or stopped; the run directory removed) and checks what a build
script relies on: the exit status, one line naming the cause, nothing
half-written, and every host file not meant to change byte-identical.

The full-filesystem tests need small filesystems, which an unprivileged user
cannot mount: .ci/run mounts them as root in a private mount namespace and
names their directory in $UMLROOT_FAULT_MOUNTS (see FaultMounts); elsewhere
those tests are skipped with that reason. The others run anywhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import UMLROOT, assert_no_leftovers, run_umlroot, uml_processes

pytestmark = pytest.mark.uml

MB = 10**6


@dataclass(frozen=True)
class FaultMounts:
    """What .ci/run mounts under $UMLROOT_FAULT_MOUNTS for these tests."""

    top: Path

    @property
    def small(self) -> Path:
        """A 64 MB tmpfs, writable by the test user: filled up by the tests."""
        return self.top / "small"

    @property
    def read_only(self) -> Path:
        """A read-only tmpfs holding `kept.txt`."""
        return self.top / "ro"


@pytest.fixture
def mounts() -> Iterator[FaultMounts]:
    """The small and read-only filesystems (tests using it carry the
    `fault_mounts` marker: .ci/run runs just those inside its namespace)."""
    top = os.environ.get("UMLROOT_FAULT_MOUNTS")
    if not top:
        pytest.skip("needs the small and read-only filesystems that .ci/run mounts as root "
                    "($UMLROOT_FAULT_MOUNTS)")
    found = FaultMounts(Path(top))
    yield found
    # Leave the small filesystem empty for the next test.
    for entry in found.small.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def snapshot(top: Path) -> dict[str, str]:
    """Every file under top with a digest of its content (links: target)."""
    seen: dict[str, str] = {}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(root, name)
            key = str(path.relative_to(top))
            if path.is_symlink():
                seen[key] = "-> " + os.readlink(path)
            elif path.is_file():
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[key] = "dir"
    return seen


def one_line(stderr: bytes) -> str:
    """The umlroot lines of stderr (the command's own may precede them)."""
    lines = [line for line in stderr.decode(errors="replace").splitlines()
             if line.startswith("umlroot:")]
    assert lines, stderr
    return "\n".join(lines)


def work_tree(tmp_path: Path) -> Path:
    """A working directory with files that must not change."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("the host's own file\n")
    (work / "sub").mkdir()
    (work / "sub" / "data.bin").write_bytes(os.urandom(4096))
    return work


# -- full filesystems --------------------------------------------------------------


@pytest.mark.fault_mounts
def test_scratch_disk_on_a_full_filesystem_fails_and_writes_nothing_back(
        tmp_path: Path, mounts: FaultMounts) -> None:
    """Issue scenario 1: the guest's writes to its scratch disk do not fit
    on the host; ext4 inside only logs it. The run must fail, not hand back
    a file full of holes."""
    work = work_tree(tmp_path)
    before = snapshot(work)
    env = {**os.environ, "TMPDIR": str(mounts.small)}
    result = run_umlroot(["run", "--mem", "256M", "--", "sh", "-c",
                          "yes 0123456789abcdef | head -c 200000000 > big.out"],
                         cwd=work, env=env, timeout=300)
    assert result.returncode == 125, result.stderr
    message = one_line(result.stderr)
    assert "could not store" in message and "the scratch disk" in message, message
    assert "No space left on device" in message and "TMPDIR" in message, message
    assert "nothing was written back" in message
    assert snapshot(work) == before  # no big.out, nothing else touched
    assert_no_leftovers(env)


@pytest.mark.fault_mounts
def test_disk_image_on_a_full_filesystem_fails(tmp_path: Path, mounts: FaultMounts) -> None:
    """Issue scenario 2: an ext4 image on a filesystem with less room than
    what the guest writes to it: the run fails and says which image."""
    image = mounts.small / "root.img"
    result = run_umlroot(
        ["run", "--disk", f"{image}:200M:name=root", "--", "sh", "-c",
         "mkfs.ext4 -q $UMLROOT_DISK_ROOT && mkdir -p /mnt/r && mount $UMLROOT_DISK_ROOT /mnt/r"
         " && yes 0123456789abcdef | head -c 120000000 > /mnt/r/fill; umount /mnt/r"],
        cwd=tmp_path, timeout=300)
    assert result.returncode == 125, result.stderr
    assert b"may grow to 200 MiB" in result.stderr  # the warning before the start
    message = one_line(result.stderr)
    assert "could not store" in message and "root.img" in message, message
    assert "No space left on device" in message and "incomplete" in message, message


@pytest.mark.fault_mounts
def test_state_file_on_a_full_filesystem_fails_and_records_no_run(
        tmp_path: Path, mounts: FaultMounts) -> None:
    state = mounts.small / "build.state"
    first = run_umlroot(["run", "--state", str(state), "--", "touch", "/opt/one"],
                        cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    info_before = run_umlroot(["state", "info", str(state)])
    result = run_umlroot(
        ["run", "--state", str(state), "--", "sh", "-c",
         "yes 0123456789abcdef | head -c 150000000 > /opt/big"], cwd=tmp_path, timeout=300)
    assert result.returncode == 125, result.stderr
    message = one_line(result.stderr)
    assert "the --state file" in message and "No space left on device" in message, message
    # The failed run is not recorded; the file itself may be damaged (ext4
    # lost some of its writes), which `state info` then says in one line.
    info_after = run_umlroot(["state", "info", str(state)])
    if info_after.returncode == 0:
        runs = [line for line in info_after.stdout.splitlines() if line.startswith(b"runs")]
        assert runs == [line for line in info_before.stdout.splitlines()
                        if line.startswith(b"runs")], info_after.stdout
    else:
        assert b"damaged" in info_after.stderr, info_after.stderr


@pytest.mark.fault_mounts
def test_full_destination_fails_and_keeps_the_old_file(
        tmp_path: Path, mounts: FaultMounts) -> None:
    """Issue scenario 3: the file made inside does not fit where it goes."""
    work = mounts.small / "work"
    work.mkdir()
    (work / "out.bin").write_text("old\n")
    (work / "keep.txt").write_text("kept\n")
    before = snapshot(work)
    result = run_umlroot(["run", "--", "sh", "-c",
                          "yes 0123456789abcdef | head -c 100000000 > out.bin"],
                         cwd=work, timeout=300)
    assert result.returncode == 125, result.stderr
    message = one_line(result.stderr)
    assert "writeback failed for 1 path" in message and "out.bin" in message, message
    assert "No space left on device" in message, message
    assert snapshot(work) == before
    assert not [p for p in work.iterdir() if p.name.startswith(".umlroot-wb")]


@pytest.mark.fault_mounts
def test_read_only_destination_fails(mounts: FaultMounts) -> None:
    work = mounts.read_only
    before = snapshot(work)
    result = run_umlroot(["run", "--", "sh", "-c", "echo new > kept.txt && echo x > made"],
                         cwd=work)
    assert result.returncode == 125, result.stderr
    assert "host denies you write access" in one_line(result.stderr)
    assert snapshot(work) == before


@pytest.mark.fault_mounts
def test_command_failure_keeps_its_own_status(tmp_path: Path, mounts: FaultMounts) -> None:
    """Writeback that cannot deliver does not hide the command's own failure."""
    result = run_umlroot(["run", "--", "sh", "-c", "echo x > made; exit 3"],
                         cwd=mounts.read_only)
    assert result.returncode == 3, result.stderr
    assert "host denies you write access" in one_line(result.stderr)


@pytest.mark.fault_mounts
def test_full_stdout_fails_the_run(tmp_path: Path, mounts: FaultMounts) -> None:
    """The command's output that cannot be passed on is lost output."""
    out = mounts.small / "stdout.bin"
    with open(out, "wb") as sink:
        done = subprocess.run([*UMLROOT, "run", "--", "sh", "-c",
                               "yes 0123456789abcdef | head -c 100000000"],
                              cwd=tmp_path, stdout=sink, stderr=subprocess.PIPE, timeout=300)
    assert done.returncode == 125, done.stderr
    message = one_line(done.stderr)
    assert "could not pass on the command's stdout" in message, message
    assert "No space left on device" in message, message


# -- faults anywhere ------------------------------------------------------------------


def test_host_change_during_the_run_fails(tmp_path: Path) -> None:
    """The host's version wins a conflict, and the run says it did not
    deliver the guest's."""
    work = work_tree(tmp_path)
    proc = subprocess.Popen([*UMLROOT, "run", "--", "sh", "-c",
                             "echo guest > keep.txt; echo ready; read answer"],
                            cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == b"ready\n"
    (work / "keep.txt").write_text("host\n")
    _out, err = proc.communicate(b"go\n", timeout=120)
    assert proc.returncode == 125, err
    assert "changed on the host during the run" in one_line(err)
    assert (work / "keep.txt").read_text() == "host\n"


def _start_and_wait_for_uml(work: Path, env: dict[str, str],
                            command: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([*UMLROOT, "run", "--timeout", "10", "--", "sh", "-c", command],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    pids = uml_processes(env["TMPDIR"])
    assert pids
    return proc, min(pids)


def test_uml_killed_fails_and_writes_nothing_back(
        tmp_path: Path, private_tmp: dict[str, str]) -> None:
    work = work_tree(tmp_path)
    before = snapshot(work)
    proc, uml = _start_and_wait_for_uml(work, private_tmp,
                                        "echo x > made; echo new > keep.txt; echo ready; sleep 60")
    os.kill(uml, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 125, err
    assert "umlroot:" in err.decode()
    assert snapshot(work) == before
    assert_no_leftovers(private_tmp)


def test_uml_stopped_past_the_timeout(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    work = work_tree(tmp_path)
    before = snapshot(work)
    proc, _uml = _start_and_wait_for_uml(work, private_tmp,
                                         "echo x > made; echo ready; sleep 5")
    for pid in uml_processes(private_tmp["TMPDIR"]):
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode == 124, err
    assert time.monotonic() - started < 60
    assert snapshot(work) == before
    assert_no_leftovers(private_tmp)


def test_run_directory_removed_during_the_run(
        tmp_path: Path, private_tmp: dict[str, str]) -> None:
    """Removing the run directory takes nothing from a running command: the
    guest and umlroot hold what they use open (output files, the scratch
    disk), so output and writeback arrive, and nothing is left behind."""
    work = work_tree(tmp_path)
    proc, _uml = _start_and_wait_for_uml(work, private_tmp,
                                         "echo x > made; echo ready; sleep 2; echo done")
    for entry in Path(private_tmp["TMPDIR"]).iterdir():
        shutil.rmtree(entry, ignore_errors=True)
    out, err = proc.communicate(timeout=90)
    assert (proc.returncode, out, err) == (0, b"done\n", b"")
    assert (work / "made").read_text() == "x\n"
    assert_no_leftovers(private_tmp)


def test_run_directory_removed_before_stdin_arrives(
        tmp_path: Path, private_tmp: dict[str, str]) -> None:
    """stdin travels as new files in the run directory: with the directory
    gone, the run fails in one line, writes nothing back, leaves nothing."""
    work = work_tree(tmp_path)
    before = snapshot(work)
    proc = subprocess.Popen([*UMLROOT, "run", "--", "sh", "-c",
                             "echo ready; read answer; echo x > made"],
                            cwd=work, env=private_tmp, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    for entry in Path(private_tmp["TMPDIR"]).iterdir():
        shutil.rmtree(entry, ignore_errors=True)
    _out, err = proc.communicate(b"go\n", timeout=90)
    assert proc.returncode == 125, err
    message = one_line(err)
    assert "could not pass stdin on" in message and "No such file or directory" in message
    assert b"Traceback" not in err
    assert snapshot(work) == before
    assert_no_leftovers(private_tmp)
