"""Writeback in batches (issue 25): small new files written by the host.

The unit tests drive the host's half (umlroot/guest/hostbatch.py) with a
fake scratch image and real files; the others boot UML and check the result
with host tools.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import run_umlroot

from umlroot.guest.hostbatch import DirTimes, HostWrites, NewFile, parse_batch
from umlroot.guest.hostcopy import Extent

uml = pytest.mark.uml

BLOCK = 4096


def hexpath(path: Path) -> str:
    return os.fsencode(str(path)).hex()


class Lines:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, line: str) -> None:
        self.sent.append(line)


# ---- unit: the list ------------------------------------------------------------------------


def test_parse_batch_records() -> None:
    text = (f"F {b'/w/a'.hex()} 5000 420 7 9 2\n0 8192 4096\n4096 16384 904\n"
            f"C {b'/w/c'.hex()} 3 384 5 0\na\nb\n"
            f"D {b'/w'.hex()} - 1 2\nD {b'/w/d'.hex()} 1517 3 0\n").encode()
    assert parse_batch(text) == [
        NewFile(b"/w/a", 5000, 0o644, 7 * 10**9 + 9,
                [Extent(0, 8192, 4096), Extent(4096, 16384, 904)]),
        NewFile(b"/w/c", 3, 0o600, 5 * 10**9, [], b"a\nb"),
        DirTimes(b"/w", None, 10**9 + 2),
        DirTimes(b"/w/d", 0o2755, 3 * 10**9),
    ]


@pytest.mark.parametrize("text", [
    b"F 2f77 10 420 0 0 1\n0 0 11\n",  # an extent past the end of the file
    b"F 2f77 10 420 0 0 2\n0 0 4\n",  # fewer extent lines than announced
    b"F 2f77 10 70000 0 0 0\n",  # not a mode
    b"C 2f77 10 420 0 0\nshort\n",  # less data than its size
    b"C 2f77 2 420 0 0\nabc\n",  # more
    b"D 2f77 - 0 1000000000\n",  # nanoseconds out of range
    b"X 2f77\n",
])
def test_parse_batch_rejects_malformed(text: bytes) -> None:
    with pytest.raises(ValueError):
        parse_batch(text)


# ---- unit: the host applies a batch ------------------------------------------------------------


def fake_image(path: Path, blocks: list[bytes]) -> None:
    path.write_bytes(b"".join(block.ljust(BLOCK, b"\0") for block in blocks))


def test_host_applies_a_batch_in_order(tmp_path: Path) -> None:
    """Data from the image (zero blocks left as holes), mode, mtime, then the
    dir's mode and mtime after its files; exceptions per entry, by index."""
    image = tmp_path / "scratch.img"
    fake_image(image, [b"", b"hello\n", b"A" * BLOCK, b"", b"tail"])
    run_dir, work = tmp_path / "run", tmp_path / "work"
    run_dir.mkdir()
    (work / "d").mkdir(parents=True)
    (work / "d" / "old").write_text("replaced")
    size = 3 * BLOCK + 4  # block, zero block (not stored), hole, 4 bytes
    listing = (
        f"F {hexpath(work / 'd' / 'hello')} 6 416 1000 500 1\n0 {BLOCK} 6\n"
        f"F {hexpath(work / 'd' / 'old')} {size} 493 2000 0 3\n"
        f"0 {2 * BLOCK} {BLOCK}\n{BLOCK} {3 * BLOCK} {BLOCK}\n{3 * BLOCK} {4 * BLOCK} 4\n"
        f"F {hexpath(work / 'd' / 'empty')} 0 2541 3000 0 0\n"
        f"C {hexpath(work / 'd' / 'inline')} {2 * BLOCK + 2} 420 5000 0\n"
    ).encode() + b"x" * BLOCK + bytes(BLOCK) + b"\0y" + (
        "\n"
        f"F {hexpath(tmp_path / 'outside')} 0 420 0 0 0\n"
        f"F {hexpath(work / 'missing' / 'f')} 0 420 0 0 0\n"
        f"D {hexpath(work / 'd')} 448 4000 7\n"
    ).encode()
    (run_dir / "xbatch.3").write_bytes(listing)
    host_writes = HostWrites(image, run_dir, [os.fsencode(str(work))])
    lines = Lines()
    try:
        host_writes.serve("XB", "3", lines)
    finally:
        host_writes.close()
    assert lines.sent == ["x 0 2"]
    assert not (run_dir / "xbatch.3").exists()
    assert (run_dir / "xbatch.3.result").read_text().splitlines() == [
        f"4 F scope {errno.EPERM}", f"5 F opendir {errno.ENOENT}"]
    d = work / "d"
    assert (d / "hello").read_bytes() == b"hello\n"
    assert stat.S_IMODE((d / "hello").stat().st_mode) == 0o640
    assert (d / "hello").stat().st_mtime_ns == 1000 * 10**9 + 500
    old = d / "old"
    assert old.read_bytes() == b"A" * BLOCK + bytes(2 * BLOCK) + b"tail"
    assert old.stat().st_blocks * 512 <= 2 * BLOCK  # the zero block and the hole: unstored
    assert stat.S_IMODE(old.stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "empty").stat().st_mode) == 0o4755  # setuid: the user's own file
    inline = d / "inline"
    assert inline.read_bytes() == b"x" * BLOCK + bytes(BLOCK) + b"\0y"
    assert inline.stat().st_blocks * 512 == 2 * BLOCK  # the zero block is a hole
    assert not (tmp_path / "outside").exists()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert d.stat().st_mtime_ns == 4000 * 10**9 + 7  # set after the files were made
    assert not [name for name in os.listdir(d) if name.startswith(".umlroot-wb.")]
    assert host_writes.batches.files == 4


def test_host_refuses_a_malformed_batch(tmp_path: Path) -> None:
    image = tmp_path / "scratch.img"
    fake_image(image, [b""])
    (tmp_path / "xbatch.1").write_text("F 2f 1 420 0 0 1\n0 0 5\n")
    host_writes = HostWrites(image, tmp_path, [os.fsencode(str(tmp_path))])
    lines = Lines()
    try:
        host_writes.serve("XB", "1", lines)
        host_writes.serve("XB", "../x", lines)
    finally:
        host_writes.close()
    assert lines.sent == [f"x {errno.EINVAL} 0"] * 2


# ---- in the guest ---------------------------------------------------------------------------------


def run_ok(cwd: Path, script: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    result = run_umlroot(["run", "--verbose", *extra, "--", "sh", "-c", script], cwd=cwd)
    assert result.returncode == 0, result.stderr.decode()
    return result


# More files than two batches hold (2048 entries each), in nested new dirs
# and in a dir the host has, with modes, times, a sparse file, an empty one,
# and a big one among them (its `XC` waits for the batch's answer first).
MANY = """set -e
mkdir -p new/a/b have/sub
for i in $(seq 1 2100); do echo "a $i" > new/a/f$i; done
for i in $(seq 1 2100); do echo "b $i" > new/a/b/f$i; done
for i in $(seq 1 300); do echo "h $i" > have/g$i; done
: > new/empty
head -c 2M /dev/urandom > new/a/big
truncate -s 600K new/sparse && printf x | dd of=new/sparse bs=1 seek=300000 conv=notrunc status=none
chmod 4750 new/a/f7
chmod 600 have/g3
touch -d '2001-02-03 04:05:06' new/a/f9 new/a/b
chmod 705 new/a/b
touch -d '2002-02-02 02:02:02' have/sub have
find new have -type f | sort | xargs sha256sum
"""


@uml
@pytest.mark.parametrize("state", [False, True], ids=["plain", "state"])
def test_many_new_files_come_back_through_batches(tmp_path: Path, state: bool) -> None:
    work = tmp_path / "work"
    (work / "have" / "sub").mkdir(parents=True)
    extra = ["--state", str(tmp_path / "st")] if state else []
    result = run_ok(work, MANY, *extra)
    assert "4502 small files written by the host" in result.stderr.decode()
    assert "1 big files" in result.stderr.decode()
    check = subprocess.run(["sha256sum", "--quiet", "-c"], input=result.stdout, cwd=work,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout.decode()[:2000]
    assert len(result.stdout.splitlines()) == 4503
    assert stat.S_IMODE((work / "new/a/f7").stat().st_mode) == 0o4750
    assert stat.S_IMODE((work / "have/g3").stat().st_mode) == 0o600
    assert (work / "new/a/f9").stat().st_mtime == 981173106
    b = (work / "new/a/b").stat()
    assert stat.S_IMODE(b.st_mode) == 0o705 and b.st_mtime == 981173106
    assert (work / "have").stat().st_mtime == (work / "have/sub").stat().st_mtime == 1012615322
    sparse = (work / "new/sparse").stat()
    assert sparse.st_size == 600 * 1024 and sparse.st_blocks * 512 <= 4 * BLOCK
    leftovers = subprocess.run(["find", ".", "-name", ".umlroot-wb.*"], cwd=work,
                               capture_output=True, check=True).stdout
    assert leftovers == b""
    if state:
        # The next run sees the files the host has as the host's.
        again = run_umlroot(["run", "--state", str(tmp_path / "st"), "--", "sh", "-c",
                             "cat new/a/f5 && rm new/empty"], cwd=work)
        assert again.returncode == 0 and again.stdout == b"a 5\n", again.stderr.decode()
        assert not (work / "new/empty").exists()


@uml
def test_host_denial_in_a_batch_is_reported(tmp_path: Path) -> None:
    """A new file in a dir the host does not let the user write: the host's
    batch fails it, and the run says so as the guest's own copy did."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        result = run_umlroot(["run", "--", "sh", "-c", "echo no > ro/new; echo yes > ok"],
                             cwd=tmp_path)
    finally:
        (tmp_path / "ro").chmod(0o755)
    err = result.stderr.decode()
    assert result.returncode != 0 and "denies you write access" in err, err
    assert not (tmp_path / "ro" / "new").exists()
    assert (tmp_path / "ok").read_text() == "yes\n"
    assert not list((tmp_path / "ro").glob(".umlroot-wb.*"))

