"""Images made inside the guest, checked on the host with the host's own tools
(issue 5): --disk, loop mounts, partitioned images, and the recipes of
docs/images.md, run verbatim."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import UMLROOT, run_umlroot

pytestmark = pytest.mark.uml

REPO = Path(__file__).resolve().parent.parent
# Host tools live in sbin on Debian, which is not on a normal user's PATH.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_PACKAGES = {
    "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs", "mkfs.ext4": "e2fsprogs",
    "fsck.vfat": "dosfstools", "unsquashfs": "squashfs-tools", "fsck.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils", "xorriso": "xorriso", "sfdisk": "fdisk", "mdir": "mtools",
    "mcopy": "mtools", "btrfs": "btrfs-progs", "xfs_repair": "xfsprogs",
    "cryptsetup": "cryptsetup-bin", "veritysetup": "cryptsetup-bin",
    "grub-install": "grub2-common grub-efi-amd64-bin",
}


def host_tool(name: str) -> str:
    """The host's tool, or skip the test naming the package that has it."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN)
    if found is None:
        pytest.skip(f"host tool {name} missing (apt-get install {_PACKAGES.get(name, name)})")
    return found


def host(*argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([host_tool(argv[0]), *argv[1:]], capture_output=True, text=True,
                            check=False, cwd=cwd)
    if check:
        assert result.returncode == 0, f"{argv}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def guest(cwd: Path, script: str, disks: Sequence[str] = (), *, args: Sequence[str] = (),
          options: Sequence[str] = (), input: bytes | None = None,
          status: int = 0) -> subprocess.CompletedProcess[bytes]:
    """Run a shell script as root in the guest, with --disk for each of DISKS."""
    argv: list[str] = ["run", *options]
    for disk in disks:
        argv += ["--disk", disk]
    result = run_umlroot([*argv, "--", "sh", "-euc", script, "sh", *args], cwd=cwd, input=input)
    assert result.returncode == status, (
        f"exit {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}\n"
        f"stderr: {result.stderr.decode(errors='replace')}")
    return result


def extract_partitions(image: Path) -> list[tuple[str, Path]]:
    """(type, file) of each partition of IMAGE, cut out with dd."""
    table = json.loads(host("sfdisk", "--json", str(image)).stdout)["partitiontable"]
    parts = []
    for number, part in enumerate(table["partitions"], start=1):
        out = image.with_name(f"{image.name}.p{number}")
        subprocess.run(["dd", f"if={image}", f"of={out}", "bs=512", f"skip={part['start']}",
                        f"count={part['size']}", "status=none"], check=True)
        parts.append((part["type"], out))
    return parts


# --- ext4 on an attached disk ------------------------------------------------

FILL_TRIM_REWRITE = r"""
mkfs.ext4 -q -F $1 "$UMLROOT_DISK_DATA"
mount "$UMLROOT_DISK_DATA" /mnt
for i in $(seq 1 40); do head -c 200000 /dev/urandom > /mnt/f$i; done
mkdir /mnt/doc && cp -a /usr/share/doc/[a-g]* /mnt/doc/
sync
rm -rf /mnt/doc /mnt/f1*
fstrim -v /mnt
for i in $(seq 100 130); do head -c 300000 /dev/urandom > /mnt/f$i; done
cd /mnt && md5sum f*
cd / && umount /mnt
"""


@pytest.mark.parametrize("mkfs_options", ["", "-E nodiscard"], ids=["discard", "nodiscard"])
def test_ext4_fill_delete_fstrim_rewrite_passes_e2fsck(tmp_path: Path, mkfs_options: str) -> None:
    image = tmp_path / "data.img"
    image.touch()
    os.utime(image, (1_000_000_000, 1_000_000_000))
    result = guest(tmp_path, FILL_TRIM_REWRITE, [f"{image}:192M:name=data"], args=[mkfs_options])
    assert b"trimmed" in result.stdout
    assert image.stat().st_mtime > 1_000_000_000  # written, and the host file shows it
    host("e2fsck", "-fn", str(image))
    (tmp_path / "out").mkdir()
    host("debugfs", "-R", f"rdump / {tmp_path}/out", str(image))
    expected: dict[str, str] = {}
    for line in result.stdout.decode().splitlines():
        if "  f" in line:  # md5sum: "<digest>  <name>"
            digest, name = line.split("  ")
            expected[name] = digest
    assert len(expected) == 40 - 11 + 31
    for name, digest in expected.items():
        assert hashlib.md5((tmp_path / "out" / name).read_bytes()).hexdigest() == digest


def test_ext4_left_mounted_is_clean(tmp_path: Path) -> None:
    """No umount: the command's mount namespace goes away with it, which
    unmounts the filesystem before the guest syncs."""
    image = tmp_path / "left.img"
    guest(tmp_path, 'mkfs.ext4 -q "$UMLROOT_DISK_LEFT_IMG" && mount "$UMLROOT_DISK_LEFT_IMG" /mnt'
                    ' && echo kept > /mnt/kept', [f"{image}:64M"])
    host("e2fsck", "-fn", str(image))
    assert host("debugfs", "-R", "cat /kept", str(image)).stdout == "kept\n"


# --- other filesystems on an attached disk -----------------------------------

def test_vfat_passes_fsck(tmp_path: Path) -> None:
    image = tmp_path / "fat.img"
    guest(tmp_path, r"""
mkfs.vfat -n DATA "$UMLROOT_DISK_FAT" >/dev/null
mount "$UMLROOT_DISK_FAT" /mnt
mkdir -p /mnt/EFI/BOOT
echo hello > /mnt/EFI/BOOT/hello.txt
cp /usr/share/doc/base-files/copyright /usr/share/common-licenses/GPL-3 /mnt/
rm /mnt/copyright
umount /mnt
""", [f"{image}:48M:name=fat"])
    host("fsck.vfat", "-n", str(image))
    if shutil.which("mtype"):
        assert host("mtype", "-i", str(image), "::/EFI/BOOT/hello.txt").stdout == "hello\n"


def test_partition_links_and_both_partitions_pass_fsck(tmp_path: Path) -> None:
    """Links to partitions dangle until sfdisk (inside) makes the kernel read
    the new table; then both filesystems are valid when cut out on the host."""
    image = tmp_path / "disk.img"
    result = guest(tmp_path, r"""
test ! -e /dev/disk/by-umlroot/d-part1 && echo before: dangling
printf 'label: gpt\nsize=40MiB, type=uefi\ntype=linux\n' | sfdisk --quiet /dev/disk/by-umlroot/d
test -b /dev/disk/by-umlroot/d-part2 && echo after: $(readlink -f /dev/disk/by-umlroot/d-part2)
mkfs.vfat -F 32 /dev/disk/by-umlroot/d-part1 >/dev/null
mkfs.ext4 -q /dev/disk/by-umlroot/d-part2
mount /dev/disk/by-umlroot/d-part2 /mnt && echo root > /mnt/root.txt && umount /mnt
mount /dev/disk/by-umlroot/d-part1 /mnt && echo esp > /mnt/esp.txt && umount /mnt
""", [f"{image}:96M:name=d"])
    assert b"before: dangling\nafter: /dev/ubdb2\n" in result.stdout
    listing = host("sfdisk", "-l", str(image)).stdout
    assert "EFI System" in listing and "Linux filesystem" in listing
    (esp_type, esp), (_root_type, root) = extract_partitions(image)
    assert esp_type == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    host("fsck.vfat", "-n", str(esp))
    host("e2fsck", "-fn", str(root))
    assert host("debugfs", "-R", "cat /root.txt", str(root)).stdout == "root\n"


# --- image files and loop devices --------------------------------------------

ROOT_OWNED_TREE = r"""
mkdir -p tree/etc tree/dev tree/bin
echo hello > tree/etc/motd
ln -s ../etc/motd tree/bin/link
chown -R 0:0 tree
chown 123:45 tree/etc/motd
mknod -m 600 tree/dev/console c 5 1
"""


def test_squashfs_is_root_owned_and_loop_mountable(tmp_path: Path) -> None:
    result = guest(tmp_path, ROOT_OWNED_TREE + r"""
mksquashfs tree out.sqfs -noappend -quiet -no-progress -comp zstd
mkdir -p /run/sq && mount -o loop,ro out.sqfs /run/sq
stat -c '%F %t,%T %u:%g' /run/sq/dev/console
umount /run/sq
""")
    assert b"character special file 5,1 0:0" in result.stdout
    listing = host("unsquashfs", "-lln", str(tmp_path / "out.sqfs")).stdout
    assert re.search(r"^crw------- 0/0 +5, +1 .* squashfs-root/dev/console$", listing, re.MULTILINE)
    assert re.search(r"^-rw-r--r-- 123/45 .* squashfs-root/etc/motd$", listing, re.MULTILINE)
    owners = re.findall(r"^\S+ (\d+/\d+) .* squashfs-root", listing, re.MULTILINE)
    assert len(owners) == 7 and owners.count("0/0") == 6, listing


def test_erofs_is_valid_and_loop_mountable(tmp_path: Path) -> None:
    result = guest(tmp_path, ROOT_OWNED_TREE + r"""
mkfs.erofs -zlz4hc out.erofs tree >/dev/null
mkdir -p /run/ero && mount -o loop out.erofs /run/ero
stat -c '%F %t,%T %u:%g' /run/ero/dev/console
cat /run/ero/bin/link
umount /run/ero
""")
    assert b"character special file 5,1 0:0\nhello\n" in result.stdout
    image = str(tmp_path / "out.erofs")
    host("fsck.erofs", image)
    dump = host("dump.erofs", "--path=/dev/console", image).stdout
    assert re.search(r"Uid: 0\s+Gid: 0", dump), dump


def test_iso9660_is_valid_and_loop_mountable(tmp_path: Path) -> None:
    host_tool("xorriso")
    result = guest(tmp_path, ROOT_OWNED_TREE + r"""
xorriso -as mkisofs -quiet -R -J -V DEMO -o out.iso tree
mkdir -p /run/iso && mount -o loop out.iso /run/iso
stat -c '%F %t,%T %u:%g' /run/iso/dev/console
cat /run/iso/etc/motd
umount /run/iso
""")
    assert b"character special file 5,1 0:0\nhello\n" in result.stdout
    listing = host("xorriso", "-indev", str(tmp_path / "out.iso"), "-lsdl", "/dev/console", "/etc/motd").stdout
    assert re.search(r"^c\S+ +\d+ +0 +0 .*'/dev/console'$", listing, re.MULTILINE), listing
    assert re.search(r"^-\S+ +\d+ +123 +45 .*'/etc/motd'$", listing, re.MULTILINE), listing


def test_loop_mount_and_losetup_partitioned_image(tmp_path: Path) -> None:
    """`mount -o loop` of an ext4 file, and `losetup -P` of a partitioned
    file; both files come back through writeback and pass fsck on the host."""
    guest(tmp_path, r"""
truncate -s 32M plain.img
mkfs.ext4 -q plain.img
mount -o loop plain.img /mnt && echo plain > /mnt/plain.txt && umount /mnt
truncate -s 64M parts.img
printf 'label: gpt\nsize=20MiB, type=linux\ntype=linux\n' | sfdisk --quiet parts.img
loop=$(losetup -P -f --show parts.img)
mkfs.ext4 -q ${loop}p1
mkfs.ext4 -q ${loop}p2
mount ${loop}p2 /mnt && echo two > /mnt/two.txt && umount /mnt
losetup -d $loop
""")
    host("e2fsck", "-fn", str(tmp_path / "plain.img"))
    assert host("debugfs", "-R", "cat /plain.txt", str(tmp_path / "plain.img")).stdout == "plain\n"
    parts = extract_partitions(tmp_path / "parts.img")
    assert len(parts) == 2
    for _type, part in parts:
        host("e2fsck", "-fn", str(part))
    assert host("debugfs", "-R", "cat /two.txt", str(parts[1][1])).stdout == "two\n"


# --- attaching: ro, SIZE, names, environment ---------------------------------

def test_sixteen_loop_devices_at_once(tmp_path: Path) -> None:
    """At least 16 loop devices: 8 exist at boot, loop-control makes the rest."""
    script = """
set -e
for i in $(seq 16); do truncate -s 1M /tmp/f$i; losetup -f /tmp/f$i; done
losetup -a | wc -l
"""
    result = guest(tmp_path, script)
    assert result.stdout.strip() == b"16"


def test_read_only_disk_refuses_writes(tmp_path: Path) -> None:
    image = tmp_path / "ro.img"
    subprocess.run([host_tool("mkfs.ext4"), "-q", "-F", str(image), "16M"], check=True)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    result = guest(tmp_path, r"""
blockdev --getro "$UMLROOT_DISK_RO_IMG"
dd if=/dev/zero of="$UMLROOT_DISK_RO_IMG" bs=512 count=1 2>/dev/null && echo dd wrote
mount -o ro "$UMLROOT_DISK_RO_IMG" /mnt
touch /mnt/new 2>/dev/null && echo touch wrote
mount -o remount,rw /mnt 2>/dev/null && echo remounted rw
ls /mnt
""", [f"{image}:ro"])
    assert result.stdout == b"1\nlost+found\n"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_size_names_environment_and_odd_paths(tmp_path: Path) -> None:
    existing = tmp_path / "my disk,1.img"
    existing.write_bytes(b"first" + b"\0" * 1019)
    big = tmp_path / "big.img"
    big.write_bytes(b"\0" * (4 << 20))
    result = guest(tmp_path, r"""
for name in new.img my_disk_1.img extra; do
    echo "$name $(readlink /dev/disk/by-umlroot/$name) $(blockdev --getsize64 /dev/disk/by-umlroot/$name)"
done
echo "$UMLROOT_DISK_NEW_IMG $UMLROOT_DISK_MY_DISK_1_IMG $UMLROOT_DISK_EXTRA"
head -c 5 "$UMLROOT_DISK_MY_DISK_1_IMG"; echo
printf second | dd of="$UMLROOT_DISK_MY_DISK_1_IMG" bs=512 seek=1 conv=notrunc 2>/dev/null
""", [f"{tmp_path}/new.img:3M", f"{existing}:1M", f"{big}:1M:name=extra"])
    assert result.stdout.decode().splitlines() == [
        f"new.img ../../ubdb {3 << 20}",
        f"my_disk_1.img ../../ubdc {1 << 20}",
        f"extra ../../ubdd {4 << 20}",  # never shrunk
        "/dev/ubdb /dev/ubdc /dev/ubdd",
        "first",
    ]
    assert (tmp_path / "new.img").stat().st_size == 3 << 20
    data = existing.read_bytes()
    assert len(data) == 1 << 20 and data[:5] == b"first" and data[512:518] == b"second"


def test_fifteen_disks(tmp_path: Path) -> None:
    disks = [f"{tmp_path}/d{i:02}.img:1M" for i in range(15)]
    result = guest(tmp_path, "readlink /dev/disk/by-umlroot/d14.img; echo $UMLROOT_DISK_D14_IMG"
                             "; echo x | dd of=/dev/ubdp conv=notrunc 2>/dev/null", disks)
    assert result.stdout == b"../../ubdp\n/dev/ubdp\n"
    assert (tmp_path / "d14.img").read_bytes()[:2] == b"x\n"


# --- the recipes of docs/images.md, verbatim ---------------------------------

def recipes() -> dict[str, str]:
    text = (REPO / "docs" / "images.md").read_text()
    found = re.findall(r"<!-- recipe: (\S+) -->\n```sh\n(.*?)```", text, re.DOTALL)
    return dict(found)


def run_recipe(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """setup + the recipe, with `umlroot` on PATH as a user would have it."""
    bin_dir = cwd / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "umlroot"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(f"'{arg}'" for arg in UMLROOT) + ' "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    book = recipes()
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", book["setup"] + book[name]],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, f"recipe {name}: exit {result.returncode}\n" \
                                   f"{result.stdout}{result.stderr}"
    return result


def test_docs_have_the_recipes() -> None:
    assert set(recipes()) == {"setup", "ext4", "ext4-fast", "squashfs", "gpt", "tarball",
                              "btrfs", "xfs", "luks", "verity", "efi"}


def assert_console_in_ext4(image: Path) -> None:
    stat = host("debugfs", "-R", "stat /dev/console", str(image)).stdout
    assert "Type: character special" in stat
    assert re.search(r"User:\s+0\s+Group:\s+0", stat)
    assert "Device major/minor number: 05:01" in stat


@pytest.mark.parametrize("name", ["ext4", "ext4-fast"])
def test_recipe_ext4(tmp_path: Path, name: str) -> None:
    host_tool("e2fsck")
    run_recipe(name, tmp_path)
    image = tmp_path / "rootfs.img"
    host("e2fsck", "-fn", str(image))
    assert_console_in_ext4(image)
    listing = host("debugfs", "-R", "ls -l /etc", str(image)).stdout
    assert re.search(r"\s0\s+0\s+10 .* os-release", listing), listing


def test_recipe_squashfs(tmp_path: Path) -> None:
    host_tool("unsquashfs")
    listing = run_recipe("squashfs", tmp_path).stdout
    assert re.search(r"^crw------- 0/0 +5, +1 .* squashfs-root/dev/console$", listing, re.MULTILINE)
    assert "squashfs-root/etc/motd" in listing
    owners = re.findall(r"^\S+ (\d+/\d+) .* squashfs-root", listing, re.MULTILINE)
    assert len(owners) == 5 and set(owners) == {"0/0"}, listing


def test_recipe_gpt(tmp_path: Path) -> None:
    host_tool("fsck.vfat")
    listing = run_recipe("gpt", tmp_path).stdout
    assert "EFI System" in listing and "Linux filesystem" in listing
    (_esp_type, esp), (_root_type, root) = extract_partitions(tmp_path / "disk.img")
    host("fsck.vfat", "-n", str(esp))
    host("e2fsck", "-fn", str(root))
    assert_console_in_ext4(root)
    if shutil.which("mtype"):
        assert "boot loader" in host("mtype", "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI").stdout


def test_recipe_tarball(tmp_path: Path) -> None:
    run_recipe("tarball", tmp_path)
    with tarfile.open(tmp_path / "rootfs.tar") as archive:
        members = {member.name: member for member in archive.getmembers()}
    assert all(member.uid == 0 and member.gid == 0 for member in members.values())
    console = members["./dev/console"]
    assert console.ischr() and (console.devmajor, console.devminor) == (5, 1)
    assert "./etc/os-release" in members


# --- the recipes of issue 14: umlroot mkfs, btrfs, xfs, LUKS, verity, EFI ----

def test_recipe_btrfs(tmp_path: Path) -> None:
    host_tool("btrfs")
    run_recipe("btrfs", tmp_path)
    listing = guest(tmp_path, r"""
mount -o ro "$UMLROOT_DISK_BTRFS_IMG" /mnt
btrfs subvolume list /mnt | awk '{print $NF}'
stat -c '%u:%g %n' /mnt/etc/os-release /mnt/@home/demo/notes.txt /mnt/@home-initial/demo
test ! -e /mnt/home/demo && echo moved
""", [f"{tmp_path / 'btrfs.img'}:ro"]).stdout.decode()
    assert listing.splitlines() == [
        "@home", "@home-initial",
        "0:0 /mnt/etc/os-release", "1000:1000 /mnt/@home/demo/notes.txt",
        "1000:1000 /mnt/@home-initial/demo", "moved"]


def test_recipe_xfs(tmp_path: Path) -> None:
    host_tool("xfs_repair")
    run_recipe("xfs", tmp_path)
    out = guest(tmp_path, r"""
mount -o ro "$UMLROOT_DISK_SRV_IMG" /mnt
stat -c '%u:%g %a %n' /mnt/www/index.html
cat /mnt/www/index.html
""", [f"{tmp_path / 'srv.img'}:ro"]).stdout.decode()
    assert out == "0:0 644 /mnt/www/index.html\n<h1>hello</h1>\n"


def test_recipe_luks(tmp_path: Path) -> None:
    host_tool("cryptsetup")
    result = run_recipe("luks", tmp_path)
    assert result.stdout.endswith("top secret\n")
    ((part_type, part),) = extract_partitions(tmp_path / "disk.img")
    assert part_type == "CA7D7CCB-63ED-4C53-861C-1742536059CC"
    dump = host("cryptsetup", "luksDump", str(part)).stdout
    assert re.search(r"^Version:\s+2$", dump, re.MULTILINE), dump
    # Nothing of the content is readable without the key.
    assert b"top secret" not in (tmp_path / "disk.img").read_bytes()


def test_recipe_verity(tmp_path: Path) -> None:
    host_tool("veritysetup")
    result = run_recipe("verity", tmp_path)
    assert result.stdout.endswith("hello from app\n")
    root_hash = (tmp_path / "app.roothash").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", root_hash)
    host("fsck.erofs", str(tmp_path / "app.raw"))
    wrong = "0" * 64
    assert host("veritysetup", "verify", str(tmp_path / "app.raw"),
                str(tmp_path / "app.verity"), wrong, check=False).returncode != 0


def test_recipe_efi(tmp_path: Path) -> None:
    host_tool("grub-install")
    host_tool("mcopy")
    listing = run_recipe("efi", tmp_path).stdout
    assert "EFI System" in listing
    ((part_type, esp),) = extract_partitions(tmp_path / "efi.img")
    assert part_type == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    host("fsck.vfat", "-n", str(esp))
    loader = tmp_path / "BOOTX64.EFI"
    host("mcopy", "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI", str(loader))
    assert loader.read_bytes()[:2] == b"MZ"  # a PE/COFF executable
    assert "x86_64-efi" in host("mdir", "-i", str(esp), "-b", "::/boot/grub").stdout
