"""`umlroot mkfs`: every image checked on the host by its own tool, and its
content (sha256, owners, modes, device nodes, xattrs) compared with the
source's after a fresh guest mounted it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import UMLROOT, run_umlroot
from mkfs_manifest import from_directory, from_tarball
from test_images import extract_partitions, host

from umlroot.images.mkfs import summary
from umlroot.images.length import image_length
from umlroot.images.options import FsType, MkfsOptions, Owners, SourceKind, parse_size
from umlroot.images.plan import host_only
from umlroot.images.size import Content, filesystem_size

MANIFEST = Path(__file__).resolve().parent / "mkfs_manifest.py"
MIB = 1 << 20

# A tree only root can make: owners, a setuid file, device nodes, a FIFO, an
# xattr; packed as fakeroot users pack theirs.
ROOT_TREE = r"""
mkdir -p t/etc t/dev t/usr/bin t/var/empty
echo hello > t/etc/motd
head -c 300000 /dev/urandom > t/usr/bin/blob
printf '#!/bin/sh\n' > t/usr/bin/tool
ln -s ../etc/motd t/usr/bin/link
chown -R 0:0 t
chown 123:45 t/etc/motd
chmod 640 t/etc/motd
chmod 4755 t/usr/bin/tool
mknod -m 600 t/dev/console c 5 1
mknod -m 660 t/dev/sda b 8 0
mkfifo -m 644 t/dev/fifo
"$PYTHON" -c 'import os; os.setxattr("t/usr/bin/blob", "user.demo", b"kept")'
tar --format=pax --xattrs --xattrs-include='user.*' --numeric-owner -C t -cf - .
"""


def mkfs(args: Sequence[str | os.PathLike[str]], cwd: Path,
         status: int = 0) -> subprocess.CompletedProcess[bytes]:
    result = run_umlroot(["mkfs", *args], cwd=cwd, timeout=300)
    assert result.returncode == status, (
        f"exit {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}\n"
        f"stderr: {result.stderr.decode(errors='replace')}")
    return result


def guest_run(cwd: Path, script: str, disks: Sequence[str] = (),
              options: Sequence[str] = ()) -> bytes:
    argv: list[str] = ["run", "--no-writeback", *options]
    for disk in disks:
        argv += ["--disk", disk]
    result = run_umlroot([*argv, "--", "sh", "-euc", script], cwd=cwd, timeout=300,
                         env=dict(os.environ, PYTHON=sys.executable, MANIFEST=str(MANIFEST)))
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stderr.decode(errors='replace')}")
    return result.stdout


def mounted_manifest(cwd: Path, disks: Sequence[str], open_script: str,
                     device: str = "/dev/disk/by-umlroot/img", fstype: str = "") -> dict[str, str]:
    """The manifest of an image as a fresh guest's kernel mounts it."""
    kind = ["-t", fstype] if fstype else []
    # stdout carries the manifest: what the open steps print (cryptsetup's
    # memory warning on a fast host, for one) goes to stderr.
    script = (f"{{ :\n{open_script}\n}} >&2\n"
              f"mkdir -p /run/m && mount -o ro {' '.join(kind)} {device} /run/m\n"
              '"$PYTHON" "$MANIFEST" /run/m')
    manifest: dict[str, str] = json.loads(guest_run(cwd, script, disks))
    return manifest


def without_xattrs(manifest: dict[str, str]) -> dict[str, str]:
    return {path: re.sub(r" \[.*\]$", " []", record) for path, record in manifest.items()}


def all_root(manifest: dict[str, str]) -> dict[str, str]:
    return {path: re.sub(r" \d+:\d+ ", " 0:0 ", record, count=1)
            for path, record in manifest.items()}


@pytest.fixture(scope="module")
def root_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("src")
    tarball = work / "root.tar"
    tarball.write_bytes(guest_run(work, ROOT_TREE))
    return tarball


@pytest.fixture
def user_tree(tmp_path: Path) -> Path:
    """A tree as an ordinary user has it (files owned by the user)."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("hello\n")
    (tree / "EFI" / "BOOT" / "data.bin").write_bytes(os.urandom(100_000))
    (tree / "etc" / "script").write_text("#!/bin/sh\n")
    (tree / "etc" / "script").chmod(0o750)
    return tree


# --- checks that need no guest -----------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--all-root", "--state", "S"], "exclude each other"),
    (["--luks", "key", "--fstype=squashfs"], "--luks needs a filesystem made on a device"),
    (["--verity", "--fstype=ext4"], "--verity needs a read-only filesystem"),
    (["--verity", "--partition", "gpt", "--fstype=erofs"], "cannot be combined with --partition"),
    (["--partition", "gpt", "--fstype=iso9660"], "--partition does not apply"),
    (["--size", "1G", "--fstype=squashfs"], "--size does not apply to squashfs"),
    (["--size", "100M", "--fstype=xfs"], "too small; xfs needs at least 300 MiB"),
    (["--size", "12Q"], "not a size"),
    (["--label", "TOO-LONG-LABEL", "--fstype=vfat"], "vfat takes 1 to 11 bytes"),
    (["--label", "x", "--fstype=squashfs"], "squashfs images have no label"),
    (["--label", "x", "--fstype=erofs"], "mkfs.erofs -L needs erofs-utils 1.6"),
    (["--luks", "empty.key"], "the key file is empty"),
])
def test_bad_combinations_are_one_line_errors(tmp_path: Path, user_tree: Path,
                                              args: list[str], message: str) -> None:
    (tmp_path / "S").write_bytes(b"x")
    (tmp_path / "key").write_bytes(b"secret")
    (tmp_path / "empty.key").touch()
    fstype = next((a.split("=", 1)[1] for a in args if a.startswith("--fstype=")), "ext4")
    args = [a for a in args if not a.startswith("--fstype=")]
    result = mkfs([*args, fstype, user_tree, "out.img"], tmp_path, status=125)
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith("umlroot: ") and message in lines[0], lines
    assert all(line.startswith("umlroot: ") for line in lines), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S", "empty.key", "key", "tree"]


def test_output_inside_source_or_source_itself(tmp_path: Path, user_tree: Path) -> None:
    result = mkfs(["ext4", ".", "out.img"], user_tree, status=125)
    assert b"is inside SOURCE" in result.stderr
    (tmp_path / "a.tar").write_bytes(b"")
    result = mkfs(["ext4", "a.tar", "a.tar"], tmp_path, status=125)
    assert b"is SOURCE itself" in result.stderr
    assert not (user_tree / "out.img").exists()


def test_guest_failure_summary() -> None:
    """The line that says why, not tar's closing words or a banner."""
    assert summary(b"tar: ./dev/fifo: Cannot mkfifo: Operation not permitted\n"
                   b"tar: Exiting with failure status due to previous errors\n") == \
        "tar: ./dev/fifo: Cannot mkfifo: Operation not permitted"
    assert summary(b"mkfs.fat 4.2 (2021-01-31)\nmkfs.vfat: unable to open /dev/x: "
                   b"No such file or directory\n").startswith("mkfs.vfat: unable to open")
    assert summary(b"") == "no message"


def test_missing_source_and_output_directory(tmp_path: Path, user_tree: Path) -> None:
    result = mkfs(["ext4", tmp_path / "nothing", "out.img"], tmp_path, status=125)
    assert b"no such file or directory" in result.stderr
    result = mkfs(["ext4", user_tree, tmp_path / "no" / "out.img"], tmp_path, status=125)
    assert b"does not exist" in result.stderr


def test_state_must_be_a_state_file(tmp_path: Path, user_tree: Path) -> None:
    (tmp_path / "not.state").write_bytes(b"\0" * 4096)
    result = mkfs(["--state", "not.state", "ext4", user_tree, "out.img"], tmp_path, status=125)
    assert b"not a umlroot state file" in result.stderr
    assert not (tmp_path / "out.img").exists()


def test_sizes() -> None:
    assert parse_size("+64M").relative and parse_size("+64M").value == 64 * MIB
    assert not parse_size("2G").relative
    empty = Content(data=0, entries=1)
    assert filesystem_size(FsType.XFS, empty) == 300 * MIB
    assert filesystem_size(FsType.BTRFS, empty) >= 128 * MIB
    big = Content(data=1 << 30, entries=10_000)
    for fstype in FsType:
        assert filesystem_size(fstype, big) > 1 << 30


def test_routes() -> None:
    """Nothing boots for what the offline tools do alone."""
    def options(fstype: FsType, **kw: object) -> MkfsOptions:
        return MkfsOptions(fstype=fstype, source=Path("s"), output=Path("o"), **kw)  # type: ignore[arg-type]

    assert host_only(options(FsType.SQUASHFS, all_root=True), SourceKind.DIRECTORY)
    assert host_only(options(FsType.EXT4, real_owners=True), SourceKind.DIRECTORY)
    # Your files root's, among other owners' (a tree of only yours becomes
    # --all-root before planning): the guest sees it so.
    assert not host_only(options(FsType.SQUASHFS), SourceKind.DIRECTORY)
    assert not host_only(options(FsType.EXT4), SourceKind.DIRECTORY)
    assert options(FsType.EXT4).owners is Owners.YOURS_AS_ROOT
    assert not host_only(options(FsType.EXT4, all_root=True), SourceKind.DIRECTORY)
    assert not host_only(options(FsType.SQUASHFS), SourceKind.TARBALL)
    assert not host_only(options(FsType.EROFS, state=Path("s")), SourceKind.DIRECTORY)
    assert options(FsType.EROFS, state=Path("s")).owners is Owners.STATE


@pytest.mark.parametrize("fstype", ["squashfs", "erofs", "iso9660"])
def test_image_length_from_the_superblock(tmp_path: Path, user_tree: Path, fstype: str) -> None:
    """The read-only types are written to a larger disk and cut to the
    length their superblock records: that cuts nothing but the zeros a tool
    pads its own file with (xorriso rounds up to 64 KiB)."""
    image = tmp_path / "img"
    if fstype == "squashfs":
        host("mksquashfs", str(user_tree), str(image), "-quiet", "-no-progress")
    elif fstype == "erofs":
        host("mkfs.erofs", "--quiet", str(image), str(user_tree))
    else:
        host("xorriso", "-no_rc", "-outdev", f"stdio:{image}", "-padding", "0",
             "-map", str(user_tree), "/")
    data = image.read_bytes()
    with open(image, "ab") as f:
        f.write(os.urandom(8192))
    length = image_length(FsType(fstype), image)
    assert len(data) - 65536 < length <= len(data)
    assert data[length:] == bytes(len(data) - length)


# --- images from a root-owned tarball ----------------------------------------

CHECKS = {
    "ext4": [["e2fsck", "-fn"]],
    "btrfs": [["btrfs", "check"]],
    "xfs": [["xfs_repair", "-n"]],
    "squashfs": [["unsquashfs", "-lln"]],
    "erofs": [["fsck.erofs"]],
    "iso9660": [["xorriso", "-no_rc", "-indev"]],
}


def host_check(fstype: str, image: Path) -> str:
    out = ""
    for argv in CHECKS[fstype]:
        out += host(*argv, str(image)).stdout
    return out


@pytest.mark.uml
@pytest.mark.parametrize("fstype", ["ext4", "btrfs", "xfs", "squashfs", "erofs", "iso9660"])
def test_tarball_keeps_owners_modes_nodes_xattrs(tmp_path: Path, root_tarball: Path,
                                                 fstype: str) -> None:
    image = tmp_path / f"out.{fstype}"
    mkfs([fstype, root_tarball, image], tmp_path)
    listing = host_check(fstype, image)
    expected = from_tarball(str(root_tarball))
    got = mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "", fstype=fstype)
    if fstype == "iso9660":
        # Rock Ridge keeps owners, modes and device nodes; xattrs need AAIP.
        expected, got = without_xattrs(expected), without_xattrs(got)
    assert got == expected
    assert got["dev/console"].startswith("c 0600 0:0 5,1")
    assert got["etc/motd"].startswith("f 0640 123:45 ")
    if fstype == "squashfs":
        assert re.search(r"^crw------- 0/0 +5, +1 .* squashfs-root/dev/console$", listing, re.MULTILINE)


@pytest.mark.uml
def test_failed_guest_step_leaves_output_alone(tmp_path: Path, root_tarball: Path) -> None:
    """vfat cannot hold device nodes: tar fails in the guest; OUTPUT keeps
    its old content and nothing is left beside it."""
    output = tmp_path / "esp.img"
    output.write_bytes(b"old image")
    result = mkfs(["vfat", root_tarball, output], tmp_path, status=125)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "Cannot mk" in lines[0] and lines[0].startswith("umlroot: mkfs: ")
    assert output.read_bytes() == b"old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esp.img"]


# --- directories: --all-root, as seen, --state --------------------------------

@pytest.mark.uml
@pytest.mark.parametrize("fstype", ["ext4", "btrfs", "xfs", "squashfs", "erofs", "iso9660"])
def test_directory_all_root(tmp_path: Path, user_tree: Path, fstype: str) -> None:
    image = tmp_path / "out.img"
    mkfs(["--all-root", fstype, user_tree, image], tmp_path)
    host_check(fstype, image)
    got = mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "", fstype=fstype)
    assert without_xattrs(got) == all_root(from_directory(str(user_tree)))


@pytest.mark.uml
def test_directory_with_real_owners_keeps_the_users_owners(
        tmp_path: Path, user_tree: Path) -> None:
    image = tmp_path / "out.img"
    mkfs(["--real-owners", "--label", "DATA", "ext4", user_tree, image], tmp_path)
    host_check("ext4", image)
    assert host("e2label", str(image)).stdout.strip() == "DATA"
    got = mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "")
    assert got == from_directory(str(user_tree))
    assert f" {os.getuid()}:{os.getgid()} " in got["etc/motd"]


@pytest.mark.uml
@pytest.mark.skipif(os.geteuid() == 0, reason="root's files are root's anyway")
@pytest.mark.parametrize("fstype", ["ext4", "squashfs"])
def test_directory_of_yours_is_root_owned_by_default(
        tmp_path: Path, user_tree: Path, fstype: str) -> None:
    """As under fakeroot: an image of a tree you made is root's."""
    image = tmp_path / "out.img"
    mkfs([fstype, user_tree, image], tmp_path)
    host_check(fstype, image)
    got = mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "")
    assert got == all_root(from_directory(str(user_tree)))
    assert " 0:0 " in got["etc/motd"]


@pytest.mark.uml
def test_vfat_from_a_directory(tmp_path: Path, user_tree: Path) -> None:
    image = tmp_path / "esp.img"
    mkfs(["--label", "ESP", "--size", "+8M", "vfat", user_tree, image], tmp_path)
    host("fsck.vfat", "-n", str(image))
    got = mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "")
    digests = {path: record.split()[3] for path, record in got.items() if record[0] == "f"}
    assert digests == {path: record.split()[3]
                       for path, record in from_directory(str(user_tree)).items()
                       if record[0] == "f"}


@pytest.mark.uml
@pytest.mark.parametrize("fstype", ["ext4", "btrfs", "squashfs"])
def test_directory_owners_from_a_state_file(tmp_path: Path, user_tree: Path,
                                            fstype: str) -> None:
    state = tmp_path / "build.state"
    make = ("chown -R 0:0 tree && chown 7:8 tree/etc/motd && mknod tree/etc/null c 1 3"
            ' && "$PYTHON" -c \'import os; os.setxattr("tree/etc/motd", "user.x", b"y")\'')
    guest_run(tmp_path, make, options=["--state", str(state)])
    expected: dict[str, str] = json.loads(guest_run(
        tmp_path, f'"$PYTHON" "$MANIFEST" {user_tree}', options=["--state", str(state)]))
    assert expected["etc/null"].startswith("c 0644 0:0 1,3")
    image = tmp_path / "out.img"
    mkfs(["--state", state, fstype, user_tree, image], tmp_path)
    host_check(fstype, image)
    assert mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "", fstype=fstype) == expected


# --- sizes, partitions, LUKS, verity ------------------------------------------

@pytest.mark.uml
def test_size_absolute_and_extra(tmp_path: Path, user_tree: Path) -> None:
    mkfs(["--size", "200M", "btrfs", user_tree, "a.img"], tmp_path)
    assert (tmp_path / "a.img").stat().st_size == 200 * MIB
    mkfs(["--all-root", "ext4", user_tree, "b.img"], tmp_path)
    mkfs(["--all-root", "--size", "+64M", "ext4", user_tree, "c.img"], tmp_path)
    assert (tmp_path / "c.img").stat().st_size == (tmp_path / "b.img").stat().st_size + 64 * MIB
    host("btrfs", "check", str(tmp_path / "a.img"))
    host("e2fsck", "-fn", str(tmp_path / "c.img"))


@pytest.mark.uml
@pytest.mark.parametrize("fstype", ["ext4", "squashfs"])
def test_gpt_partition(tmp_path: Path, user_tree: Path, fstype: str) -> None:
    image = tmp_path / "disk.img"
    mkfs(["--all-root", "--partition", "gpt", fstype, user_tree, image], tmp_path)
    ((part_type, part),) = extract_partitions(image)
    assert part_type == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    host_check(fstype, part)
    got = mounted_manifest(tmp_path, [f"{image}:ro:name=img"], "",
                           device="/dev/disk/by-umlroot/img-part1", fstype=fstype)
    assert without_xattrs(got) == all_root(from_directory(str(user_tree)))


@pytest.mark.uml
def test_luks_ext4_partition_opens_in_a_fresh_guest(tmp_path: Path, root_tarball: Path) -> None:
    key = tmp_path / "disk.key"
    key.write_bytes(os.urandom(64))
    image = tmp_path / "disk.img"
    mkfs(["--partition", "gpt", "--luks", key, "ext4", root_tarball, image], tmp_path)
    ((part_type, part),) = extract_partitions(image)
    assert part_type == "CA7D7CCB-63ED-4C53-861C-1742536059CC"
    dump = host("cryptsetup", "luksDump", str(part)).stdout
    assert re.search(r"^Version:\s+2$", dump, re.MULTILINE) and "Keyslots:" in dump
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"wrong")
    opened = mounted_manifest(
        tmp_path, [f"{image}:ro:name=img"],
        f"! cryptsetup open --readonly --key-file {wrong} /dev/disk/by-umlroot/img-part1 x"
        f" 2>/dev/null\ncryptsetup open --readonly --key-file {key}"
        " /dev/disk/by-umlroot/img-part1 plain", device="/dev/mapper/plain")
    assert opened == from_tarball(str(root_tarball))


@pytest.mark.uml
@pytest.mark.parametrize("fstype", ["squashfs", "erofs"])
def test_verity_root_hash(tmp_path: Path, root_tarball: Path, fstype: str) -> None:
    image = tmp_path / "root.raw"
    # -v: the guest's steps on stderr; stdout holds the root hash alone.
    stdout = mkfs(["-v", "--verity", fstype, root_tarball, image], tmp_path).stdout.decode()
    assert re.fullmatch(r"[0-9a-f]{64}\n", stdout), stdout
    root_hash = stdout.strip()
    assert (tmp_path / "root.roothash").read_text() == root_hash + "\n"
    verity = tmp_path / "root.verity"
    host("veritysetup", "verify", str(image), str(verity), root_hash)
    host_check(fstype, image)
    opened = mounted_manifest(
        tmp_path, [f"{image}:ro:name=img", f"{verity}:ro:name=hash"],
        "veritysetup open /dev/disk/by-umlroot/img v /dev/disk/by-umlroot/hash " + root_hash,
        device="/dev/mapper/v", fstype=fstype)
    assert opened == from_tarball(str(root_tarball))
    # The check can fail: one changed byte of the image, and it does.
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert host("veritysetup", "verify", str(image), str(verity), root_hash,
                check=False).returncode != 0


def test_manifest_sees_what_tar_holds(tmp_path: Path) -> None:
    """The comparison itself: a tarball and its own extraction (as the user)
    agree on everything but the owners, which a user cannot set."""
    tree = tmp_path / "t"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"x")
    os.symlink("a/f", tree / "l")
    with tarfile.open(tmp_path / "t.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(tree, arcname=".")
    assert from_tarball(str(tmp_path / "t.tar")) == from_directory(str(tree))
    (tree / "a" / "f").write_bytes(b"y")
    assert from_tarball(str(tmp_path / "t.tar")) != from_directory(str(tree))


@pytest.mark.uml
def test_source_in_tmp_seen_from_elsewhere(root_tarball: Path) -> None:
    """The guest has a fresh /tmp unless umlroot runs from under /tmp; mkfs
    must still see a source there when started from another directory."""
    work = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        source = work / "root.tar"
        source.write_bytes(root_tarball.read_bytes())
        mkfs(["ext4", source, work / "out.img"], Path("/"))
        host("e2fsck", "-fn", str(work / "out.img"))
        assert "Type: character special" in host("debugfs", "-R", "stat /dev/console",
                                                  str(work / "out.img")).stdout
    finally:
        shutil.rmtree(work)


def test_source_where_the_guest_cannot_see_it(tmp_path: Path) -> None:
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        result = mkfs(["ext4", shm, tmp_path / "out.img"], tmp_path, status=125)
        assert b"under /dev, which the guest has a fresh one of" in result.stderr
        assert list(tmp_path.iterdir()) == []
    finally:
        shm.rmdir()


@pytest.mark.uml
def test_interrupted_mkfs_leaves_nothing(tmp_path: Path, root_tarball: Path) -> None:
    """Ctrl-C while the guest formats a LUKS container (seconds of key
    derivation): no OUTPUT, no staging directory, no UML process."""
    key = tmp_path / "k"
    key.write_bytes(b"secret")
    output = tmp_path / "disk.img"
    process = subprocess.Popen([*UMLROOT, "mkfs", "--luks", str(key), "ext4",
                                str(root_tarball), str(output)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".disk.img.*.umlroot-mkfs/image")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # well inside the guest by now
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]
    # UML's command line names the staging image (ubd1=...).
    assert [pid for pid in os.listdir("/proc") if pid.isdigit() and _ours(pid, tmp_path)] == []


def _ours(pid: str, where: Path) -> bool:
    try:
        return str(where) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False
