"""The `container` group: what must work where CI runs. .ci/run runs these
once more inside a mount namespace shaped like Docker's default (/dev/shm a
64 MiB tmpfs, noexec,nosuid,nodev); they pass on an ordinary host too.

With a kernel that maps guest memory from /dev/shm (no memfd patch) the
namespace run fails: `run -- true` cannot boot (noexec), and 300 MB of guest
memory do not fit in 64 MiB. A kernel carrying umlroot's memfd patch passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_umlroot

pytestmark = [pytest.mark.uml, pytest.mark.container]

WORKLOAD = "chown -R 0:0 tree && mknod tree/null c 1 3 && tar -cf out.tar tree"


def test_run_true(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "true"], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_300_mb_of_guest_memory(tmp_path: Path) -> None:
    """The guest's /run is a tmpfs: its pages are guest memory, i.e. the host's
    memory file (or memfd). Shmem in the guest proves they are resident."""
    script = ("head -c 300M /dev/zero > /run/x && wc -c < /run/x && "
              "awk '/^Shmem:/ {print $2}' /proc/meminfo")
    result = run_umlroot(["run", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    size, shmem_kib = result.stdout.split()
    assert int(size) == 300 << 20
    # Shmem counts pages, minus a few the kernel accounts elsewhere (307,180
    # KiB measured for 307,200 written).
    assert int(shmem_kib) >= 295 << 10


def test_fakeroot_workload(tmp_path: Path) -> None:
    """bench/fakeroot_workload.py's command over a small tree."""
    tree = tmp_path / "tree"
    for d in range(20):
        sub = tree / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(50):
            (sub / f"f{f}").write_bytes(bytes([d, f]) * 2048)
    result = run_umlroot(["run", "--", "sh", "-c", WORKLOAD], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    listing = subprocess.run(["tar", "-tvf", str(tmp_path / "out.tar")], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert len(listing) == 1 + 20 * 51 + 1  # tree, 20 dirs of 50 files, null
    assert {line.split()[1] for line in listing} == {"root/root"}
    assert any(line.startswith("crw") and line.endswith("tree/null") for line in listing)


def test_disk_image(tmp_path: Path) -> None:
    e2fsck = shutil.which("e2fsck") or shutil.which("e2fsck", path="/usr/sbin:/sbin")
    assert e2fsck is not None, "e2fsprogs is installed wherever umlroot runs"
    script = ('mkfs.ext4 -q "$UMLROOT_DISK_IMG" && mkdir -p /mnt/img && '
              'mount "$UMLROOT_DISK_IMG" /mnt/img && mknod /mnt/img/console c 5 1 && '
              'head -c 20M /dev/urandom > /mnt/img/data && umount /mnt/img')
    result = run_umlroot(["run", "--disk", "img:256M", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    check = subprocess.run([e2fsck, "-fn", str(tmp_path / "img")], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def doctor_line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f"  {name}:" in line)


@pytest.mark.parametrize("memdir", [None, "/nonexistent-umlroot-memdir"])
def test_doctor_and_run_agree_on_guest_memory(tmp_path: Path, memdir: str | None) -> None:
    """Whatever the kernel and the mounts: doctor reports FAIL for guest
    memory exactly when `run` cannot get it, and then run's error is one line
    naming the size and the place. A memfd kernel needs no directory, so a
    bad UMLROOT_MEMDIR must not matter to it (nor to doctor)."""
    env = dict(os.environ)
    if memdir is not None:
        env["UMLROOT_MEMDIR"] = memdir
    run = run_umlroot(["run", "--", "true"], cwd=tmp_path, env=env)
    doctor = run_umlroot(["doctor"], env=env)
    memory = doctor_line(doctor.stdout.decode(), "guest memory")
    assert run.returncode in (0, 125), run.stderr
    assert memory.startswith("FAIL") == (run.returncode == 125), (memory, run.stderr)
    if run.returncode == 125:
        first, *rest = run.stderr.decode().splitlines()
        place = memdir or "/dev/shm"
        assert first.startswith("umlroot: the guest's memory (1G) could not be had: UML maps "
                                f"it from a file in {place}"), run.stderr
        assert all(line.startswith("umlroot: hint:") for line in rest), run.stderr
