"""Writeback: what CMD changed under the scope comes back to the host.

Every test boots UML through the real `umlroot` command line and checks the
result with host tools only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import UMLROOT, run_umlroot
from sparse_digest import sparse_digest

from umlroot.guest.hostcopy import ScratchCopier
from umlroot.guest.writeback import Entry, Kind, WritebackReport, parse_report, summary_lines

uml = pytest.mark.uml


def run_ok(cwd: Path, script: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    result = run_umlroot(["run", *extra, "--", "sh", "-c", script], cwd=cwd)
    assert result.returncode == 0, result.stderr.decode()
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# ---- unit: the host-side report ------------------------------------------------------


def test_report_parsing_and_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = parse_report("device\t/a/dev\nowner\t1234:5678\t/a/f\\nx\noutside\t/x.deb\n"
                           "newkind\t/ignored\n")
    assert entries == [Entry(Kind.DEVICE, "/a/dev"), Entry(Kind.OWNER, "/a/f\nx", "1234:5678"),
                       Entry(Kind.OUTSIDE, "/x.deb")]
    monkeypatch.chdir(tmp_path)
    parent = str(tmp_path.parent)
    report = WritebackReport({"devices": 3, "owners": 412, "outside": 1},
                             [Entry(Kind.OUTSIDE, f"{parent}/x.deb")])
    lines = summary_lines(report, verbose=False)
    assert lines == [
        f"discarded 1 change outside the writeback scope: {parent}/x.deb (hint: --writable ..)",
        ("kept only inside: 3 device nodes, 412 owner changes "
         "(use --state to keep them, or write an archive/image)"),
    ]
    assert summary_lines(WritebackReport({"files": 2}), verbose=False) == []
    assert summary_lines(WritebackReport({"denied": 2, "state": 1}), verbose=False) == [
        ("kept only inside (in the --state file): 2 changes where the host denies you "
         "write access")]


# ---- applied changes -------------------------------------------------------------------


MAKEFILE = """\
all:
install:
\tinstall -d $(DESTDIR)/usr/bin $(DESTDIR)/usr/share/demo $(DESTDIR)/etc
\tinstall -m 755 demo.sh $(DESTDIR)/usr/bin/demo
\tinstall -m 644 README $(DESTDIR)/usr/share/demo/README
\tinstall -m 600 secret $(DESTDIR)/etc/demo.conf
\tchown -R 0:0 $(DESTDIR)
"""


@uml
def test_make_install_destdir(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "demo.sh").write_text("#!/bin/sh\necho demo\n")
    (tmp_path / "README").write_text("read me\n")
    (tmp_path / "secret").write_text("s3cret\n")
    result = run_umlroot(["run", "--", "make", "install", "DESTDIR=pkg"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    pkg = tmp_path / "pkg"
    assert (pkg / "usr/bin/demo").read_text() == "#!/bin/sh\necho demo\n"
    assert mode(pkg / "usr/bin/demo") == 0o755
    assert mode(pkg / "usr/share/demo/README") == 0o644
    assert mode(pkg / "etc/demo.conf") == 0o600
    assert (pkg / "etc/demo.conf").read_text() == "s3cret\n"
    # Owned by the invoking user on the host, by design.
    assert (pkg / "usr/bin/demo").stat().st_uid == os.getuid()
    assert b"kept only inside" not in result.stderr  # root:root maps to the user


@uml
def test_rm_mv_symlink_fifo_hardlink(tmp_path: Path) -> None:
    (tmp_path / "doomed").write_text("bye\n")
    (tmp_path / "old").write_text("moved\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/inner").write_text("x\n")
    (tmp_path / "edit").write_text("before\n")
    run_ok(tmp_path, "rm doomed && mv old new && ln -s new link && mkfifo pipe && "
                     "rm -r sub && echo after > edit && echo data > a && ln a b")
    assert not (tmp_path / "doomed").exists()
    assert not (tmp_path / "old").exists()
    assert (tmp_path / "new").read_text() == "moved\n"
    assert os.readlink(tmp_path / "link") == "new"
    assert stat.S_ISFIFO((tmp_path / "pipe").lstat().st_mode)
    assert not (tmp_path / "sub").exists()
    assert (tmp_path / "edit").read_text() == "after\n"
    assert (tmp_path / "a").stat().st_ino == (tmp_path / "b").stat().st_ino
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".umlroot")]
    assert leftovers == []


@uml
def test_directory_rename(tmp_path: Path) -> None:
    tree = tmp_path / "src/deep"
    tree.mkdir(parents=True)
    (tree / "one").write_text("1\n")
    (tmp_path / "src/two").write_text("2\n")
    run_ok(tmp_path, "mv src dst && echo 3 > dst/three")
    assert not (tmp_path / "src").exists()
    assert (tmp_path / "dst/deep/one").read_text() == "1\n"
    assert (tmp_path / "dst/two").read_text() == "2\n"
    assert (tmp_path / "dst/three").read_text() == "3\n"


@uml
def test_chmod_and_touch_only(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("content\n")
    os.chmod(f, 0o644)
    g = tmp_path / "g"
    g.write_text("other\n")
    before = f.stat().st_mtime_ns
    (tmp_path / "s").write_text("setuid\n")
    run_ok(tmp_path, "chmod 700 f && touch -d @1000000000 g && chmod 4755 s")
    assert mode(f) == 0o700
    assert mode(tmp_path / "s") == 0o4755
    assert f.stat().st_mtime_ns == before
    assert f.read_text() == "content\n"
    assert g.stat().st_mtime == 1000000000
    assert g.read_text() == "other\n"


@uml
def test_done_when_scenario(tmp_path: Path) -> None:
    run_ok(tmp_path, "mkdir -p pkg/usr/bin && cp /bin/true pkg/usr/bin/ && "
                     "chown -R 0:0 pkg && tar -cf pkg.tar pkg")
    assert (tmp_path / "pkg/usr/bin/true").read_bytes() == Path("/bin/true").read_bytes()
    assert mode(tmp_path / "pkg/usr/bin/true") == mode(Path("/bin/true"))
    listing = subprocess.run(["tar", "-tvf", "pkg.tar"], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout.splitlines()
    assert len(listing) == 4
    assert all(" root/root " in line for line in listing), listing


@uml
def test_not_representable_is_reported(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    script = ("mknod null c 1 3 && chown 1234:5678 f && python3 -c "
              "\"import os; os.setxattr('f', 'user.note', b'1')\"")
    result = run_ok(tmp_path, script, "--verbose")
    assert not (tmp_path / "null").exists()
    err = result.stderr.decode()
    assert "kept only inside: 1 device node, 1 owner change, 1 path with xattrs" in err
    assert f"device: {tmp_path}/null" in err
    assert (tmp_path / "f").stat().st_uid == os.getuid()


@uml
def test_outside_scope_discarded_with_hint(tmp_path: Path) -> None:
    work = tmp_path / "src"
    work.mkdir()
    result = run_ok(work, "echo deb > ../x.deb && echo in > inside")
    assert not (tmp_path / "x.deb").exists()
    assert (work / "inside").read_text() == "in\n"
    err = result.stderr.decode()
    assert f"outside the writeback scope: {tmp_path}/x.deb (hint: --writable ..)" in err
    run_ok(work, "echo deb > ../x.deb", "--writable", "..")
    assert (tmp_path / "x.deb").read_text() == "deb\n"


@uml
def test_no_writeback(tmp_path: Path) -> None:
    result = run_ok(tmp_path, "echo x > f", "--no-writeback")
    assert not (tmp_path / "f").exists()
    assert result.stderr == b""


@uml
def test_timeout_writes_nothing(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--timeout", "2", "--", "sh", "-c", "echo x > f; sleep 60"],
                         cwd=tmp_path)
    assert result.returncode == 124, result.stderr.decode()
    assert not (tmp_path / "f").exists()


@uml
def test_conflict_keeps_host_version(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("original\n")
    proc = subprocess.Popen(
        [*UMLROOT, "run", "--", "sh", "-c", "echo guest > f && echo new > g && echo ready && sleep 3"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.05)
        f.write_text("edited on the host\n")
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # The guest's f was not delivered: the run fails (125), the rest came back.
    assert proc.returncode == 125, err.decode()
    assert f.read_text() == "edited on the host\n"
    assert (tmp_path / "g").read_text() == "new\n"
    assert f"changed on the host during the run (the host's version kept): {f}" in err.decode()


@uml
def test_directory_replaced_by_a_new_one(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "old").write_text("old\n")
    (d / "sub/older").write_text("older\n")
    run_ok(tmp_path, "rm -r d && mkdir d && echo new > d/new")
    assert sorted(p.name for p in d.iterdir()) == ["new"]
    assert (d / "new").read_text() == "new\n"


@uml
def test_big_file_round_trip(tmp_path: Path) -> None:
    run_ok(tmp_path, "head -c 20000000 /dev/urandom > big && sha256sum big > big.sum")
    check = subprocess.run(["sha256sum", "-c", "big.sum"], cwd=tmp_path, capture_output=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# ---- sparse files: holes stay holes, content byte-identical ------------------------------------

SPARSE_DIGEST = [sys.executable, str(Path(__file__).parent / "sparse_digest.py")]


@uml
@pytest.mark.parametrize("state", [False, True], ids=["plain", "state"])
def test_sparse_file_comes_back_sparse(tmp_path: Path, state: bool) -> None:
    work = tmp_path / "work"
    work.mkdir()
    extra = ["--state", str(tmp_path / "st")] if state else []
    script = ("truncate -s 1G sparse && printf x | dd of=sparse bs=1 seek=536870912 "
              "conv=notrunc status=none && head -c 8M /dev/zero > zeros && "
              f"{shlex.join(SPARSE_DIGEST)} sparse")
    result = run_ok(work, script, *extra)
    sparse = work / "sparse"
    assert sparse.stat().st_size == 1 << 30
    assert sparse.stat().st_blocks * 512 <= 16 * 4096  # one block, as inside (+ fs slack)
    assert sparse_digest(str(sparse)) == result.stdout.decode().split()[0]
    with open(sparse, "rb") as f:
        f.seek(536870912)
        assert f.read(1) == b"x"
    # Written zeros are not stored either, and still read back as zeros.
    zeros = work / "zeros"
    assert zeros.stat().st_size == 8 << 20 and zeros.stat().st_blocks == 0
    assert zeros.read_bytes() == bytes(8 << 20)


@uml
def test_ext4_image_comes_back_as_allocated_inside(tmp_path: Path) -> None:
    """The issue's case: an image made in the cwd came back fully allocated."""
    script = ("truncate -s 2G root.img && mkfs.ext4 -q root.img && mkdir /run/img && "
              "mount -o loop root.img /run/img && head -c 20M /dev/urandom > /run/img/big && "
              "cp -a /usr/share/doc/dpkg /run/img/ && umount /run/img && "
              f"stat -c %b root.img && {shlex.join(SPARSE_DIGEST)} root.img")
    result = run_ok(tmp_path, script)
    blocks_inside, digest = result.stdout.decode().split()[:2]
    image = tmp_path / "root.img"
    assert image.stat().st_size == 2 << 30
    assert image.stat().st_blocks <= 1.1 * int(blocks_inside)
    assert image.stat().st_blocks * 512 >= 20 << 20  # the random data is there
    assert sparse_digest(str(image)) == digest
    e2fsck = shutil.which("e2fsck", path="/usr/sbin:/sbin") or "e2fsck"
    check = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, check=False)
    assert check.returncode == 0, check.stdout.decode()


# ---- big files: copied on the host, out of the scratch image (issue 23) -------------------


def test_host_copy_of_listed_extents(tmp_path: Path) -> None:
    """The host's half alone: extents of a fake scratch image, zero blocks
    and holes left unwritten, only a fresh `.umlroot-wb.N` file accepted."""
    image = tmp_path / "scratch.img"
    data = os.urandom(3 << 20)
    with open(image, "wb") as f:
        f.write(bytes(1 << 20))  # [0, 1M): the "file system"
        f.write(data[:1 << 20])  # [1M, 2M): logical [0, 1M)
        f.write(bytes(8192) + data[1 << 20:(2 << 20) - 8192])  # [2M, 3M): [1M, 2M)
        f.write(data[2 << 20:] + bytes(1 << 20))  # [3M, 5M): [4M, 6M), a zero MiB
    size = (6 << 20) + 5
    dest = tmp_path / ".umlroot-wb.1"
    dest.touch()
    listing = (f"{os.fsencode(str(dest)).hex()}\n{size}\n"
               f"0 {1 << 20} {1 << 20}\n{1 << 20} {2 << 20} {1 << 20}\n"
               f"{4 << 20} {3 << 20} {2 << 20}\n")
    (tmp_path / "xcopy").write_text(listing)
    scope = os.fsencode(str(tmp_path))
    copier = ScratchCopier(image, tmp_path, [scope])
    try:
        assert copier.copy_listed() == 0
        os.truncate(dest, size)  # the guest's part
        expected = (data[:1 << 20] + bytes(8192) + data[1 << 20:(2 << 20) - 8192]
                    + bytes(2 << 20) + data[2 << 20:] + bytes((1 << 20) + 5))
        assert dest.read_bytes() == expected
        assert dest.stat().st_blocks * 512 <= (3 << 20) + 64 * 4096  # no zeros, no hole
        assert copier.files == 1
        # Only a new, empty temporary file of writeback's.
        assert copier.copy_listed() != 0  # not empty any more
        other = tmp_path / "target"
        other.touch()
        (tmp_path / "xcopy").write_text(listing.replace(
            os.fsencode(str(dest)).hex(), os.fsencode(str(other)).hex()))
        assert copier.copy_listed() != 0
        assert other.stat().st_size == 0
    finally:
        copier.close()
    # Nowhere outside the writeback scopes, even an empty temporary file.
    dest.write_bytes(b"")
    (tmp_path / "xcopy").write_text(listing)
    outside = ScratchCopier(image, tmp_path, [scope + b"/elsewhere"])
    try:
        assert outside.copy_listed() != 0
        assert dest.stat().st_size == 0
    finally:
        outside.close()


@uml
@pytest.mark.parametrize("state", [False, True], ids=["plain", "state"])
def test_big_file_copied_on_host(tmp_path: Path, state: bool) -> None:
    """A file of 1 MiB or more, its data in the upper layer, is copied by the
    host out of the scratch image: byte-identical, holes and zeros unstored."""
    work = tmp_path / "work"
    work.mkdir()
    extra = ["--state", str(tmp_path / "st")] if state else []
    script = ("head -c 3M /dev/urandom > big && head -c 2M /dev/zero >> big && "
              "truncate -s 8M big && head -c 1M /dev/urandom >> big && "
              "head -c 100000 /dev/urandom > small && "
              f"{shlex.join(SPARSE_DIGEST)} big && sha256sum small")
    result = run_ok(work, script, "--verbose", *extra)
    assert "1 big files" in result.stderr.decode()  # `small` is copied by the guest
    digest, small_sum = result.stdout.decode().split("\n")[:2]
    big = work / "big"
    assert big.stat().st_size == 9 << 20
    assert sparse_digest(str(big)) == digest.split()[0]
    assert (4 << 20) <= big.stat().st_blocks * 512 <= (4 << 20) + 64 * 4096
    check = subprocess.run(["sha256sum", "-c"], input=small_sum.encode() + b"\n", cwd=work,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
