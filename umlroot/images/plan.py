"""`umlroot mkfs`: which steps run where, as argv lists.

The rule: the host does what needs no root (the offline tools: `mkfs.ext4
-d`, `mksquashfs -all-root`, `mkfs.erofs --all-root`, xorriso, sfdisk,
veritysetup format), the guest only what does (owners other than yours,
device nodes and xattrs from a tarball or a --state file, dm-crypt, mounting
btrfs/xfs/vfat to fill them). So a job with nothing for root boots nothing.

| source, owners                | ext4            | btrfs/xfs/vfat | squashfs/erofs/iso9660 |
|-------------------------------|-----------------|----------------|------------------------|
| directory, --real-owners      | host            | guest          | host                   |
| directory, --all-root         | host + chown    | guest          | host                   |
| directory, yours as root (*)  | host + chown    | guest          | guest                  |
| directory, --state            | guest           | guest          | guest                  |
| tarball                       | guest           | guest          | guest (extract first)  |
| --luks (block types)          | guest           | guest          | refused                |

(*) The default: your files root's, other owners' as they are, as the guest
sees the host. A tree that holds only your files is made as with --all-root
(mkfs.resolve_owners), so only a tree with other owners' files takes this row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from umlroot.images.options import FsType, MkfsOptions, Owners, Partitioning, SourceKind
from umlroot.images.size import GPT_HEAD, Content, ext4_inodes

DISK_NAME = "umlroot-mkfs"
GUEST_DISK = f"/dev/disk/by-umlroot/{DISK_NAME}"
MAPPER_NAME = "umlroot-mkfs"
MOUNT_POINT = "/run/umlroot-mkfs"
# On the guest's overlay root, whose upper layer is the throwaway scratch
# disk (64 GiB, sparse): room for a large tarball, unlike the RAM of /run.
EXTRACT_DIR = "/var/tmp/umlroot-mkfs-tree"

# For the one-line "not installed" error before anything boots.
PACKAGES = {
    "mkfs.ext4": "e2fsprogs", "mkfs.btrfs": "btrfs-progs", "mkfs.xfs": "xfsprogs",
    "mkfs.vfat": "dosfstools", "mksquashfs": "squashfs-tools", "mkfs.erofs": "erofs-utils",
    "xorriso": "xorriso", "cryptsetup": "cryptsetup-bin", "veritysetup": "cryptsetup-bin",
    "sfdisk": "fdisk", "tar": "tar", "cp": "coreutils", "chown": "coreutils",
    "mkdir": "coreutils", "mount": "mount", "umount": "mount",
}

# GPT partition types (UAPI discoverable partitions where one fits).
PARTITION_TYPES = {
    "linux": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    "basic-data": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
    "luks": "CA7D7CCB-63ED-4C53-861C-1742536059CC",
}


@dataclass(frozen=True)
class Plan:
    """Host steps run before the guest boots (on the staging file), guest
    steps inside, in order; no guest steps: nothing boots."""

    host: list[list[str]] = field(default_factory=list)
    guest: list[list[str]] = field(default_factory=list)

    @property
    def tools(self) -> list[str]:
        seen: dict[str, None] = {}
        for argv in (*self.host, *self.guest):
            seen.setdefault(argv[0], None)
        return list(seen)


def partition_type(options: MkfsOptions) -> str:
    if options.luks_key is not None:
        return PARTITION_TYPES["luks"]
    if options.fstype is FsType.VFAT:
        return PARTITION_TYPES["basic-data"]
    return PARTITION_TYPES["linux"]


def host_only(options: MkfsOptions, kind: SourceKind) -> bool:
    """The offline tool writes the whole image (no step needs root)."""
    return (kind is SourceKind.DIRECTORY and options.owners is not Owners.STATE
            and options.luks_key is None
            and options.owners in (Owners.REAL, Owners.ALL_ROOT)
            and (options.fstype.writes_file
                 or (options.fstype is FsType.EXT4 and options.owners is Owners.REAL)))


def ext4_prefilled_on_host(options: MkfsOptions, kind: SourceKind) -> bool:
    """ext4 from a directory: the host's `mkfs.ext4 -d` copies the data (no
    root needed, and 2x faster than in the guest, see docs/images.md); the
    guest only hands the files to root."""
    return (options.fstype is FsType.EXT4 and kind is SourceKind.DIRECTORY
            and options.owners in (Owners.ALL_ROOT, Owners.YOURS_AS_ROOT)
            and options.luks_key is None)


def _label(flag: str, options: MkfsOptions) -> list[str]:
    return [flag, options.label] if options.label is not None else []


def ext4_argv(options: MkfsOptions, content: Content | None, device: str,
              source: str | None, *, host_offset: int | None = None,
              size: int | None = None) -> list[str]:
    """mkfs.ext4; with `host_offset`, into a partition of the image file
    (mke2fs writes at that offset and needs the size then)."""
    extended = ["nodiscard"]
    if host_offset:
        extended.append(f"offset={host_offset}")
    if source is not None:
        # -d copies every owner but the root directory's.
        st = os.stat(source)
        extended.append(f"root_owner={st.st_uid}:{st.st_gid}")
    # mke2fs keeps only the last -E: one, with everything.
    argv = ["mkfs.ext4", "-q", "-F", *_label("-L", options), "-E", ",".join(extended)]
    if content is not None:
        argv += ["-N", str(ext4_inodes(content))]
    if source is not None:
        argv += ["-d", source]
    argv.append(device)
    if size is not None:
        argv.append(f"{size // 1024}k")
    return argv


def mkfs_argv(options: MkfsOptions, content: Content | None, device: str) -> list[str]:
    """Format DEVICE, empty (ext4 from a tarball, btrfs, xfs, vfat)."""
    if options.fstype is FsType.EXT4:
        return ext4_argv(options, content, device, None)
    if options.fstype is FsType.BTRFS:
        return ["mkfs.btrfs", "-q", "-f", "--nodiscard", *_label("-L", options), device]
    if options.fstype is FsType.XFS:
        return ["mkfs.xfs", "-q", "-f", "-K", *_label("-L", options), device]
    assert options.fstype is FsType.VFAT
    return ["mkfs.vfat", *_label("-n", options), device]


def read_only_argv(options: MkfsOptions, source: str, output: str) -> list[str]:
    """Write a squashfs/erofs/iso9660 image of SOURCE to OUTPUT (a file on
    the host, or the guest's disk device)."""
    all_root = options.owners is Owners.ALL_ROOT
    if options.fstype is FsType.SQUASHFS:
        return ["mksquashfs", source, output, "-noappend", "-quiet", "-no-progress",
                *(["-all-root"] if all_root else [])]
    if options.fstype is FsType.EROFS:
        return ["mkfs.erofs", "--quiet", *(["--all-root"] if all_root else []), output, source]
    assert options.fstype is FsType.ISO9660
    argv = ["xorriso", "-no_rc", "-report_about", "FAILURE", "-outdev", f"stdio:{output}",
            # No 300 KiB of zeros at the end (a workaround for Linux 2.4).
            "-padding", "0",
            *(["-volid", options.label] if options.label is not None else []),
            "-joliet", "on", "-rockridge", "on", "-map", source, "/"]
    if all_root:
        argv += ["-chown_r", "0", "/", "--", "-chgrp_r", "0", "/", "--"]
    return argv


def extract_argv(options: MkfsOptions, tarball: str, target: str) -> list[str]:
    """Unpack as root, keeping owners, modes, device nodes and xattrs."""
    argv = ["tar", "-C", target, "-xf", tarball, "--numeric-owner"]
    if options.fstype is FsType.VFAT:
        # vfat holds neither owners nor modes; tar would fail to set them.
        return [*argv, "--no-same-owner", "--no-same-permissions"]
    argv += ["-p", "--xattrs", "--xattrs-include=*"]
    if options.owners is Owners.ALL_ROOT:
        argv.append("--no-same-owner")  # root extracting: files become root's
    return argv


def copy_argv(options: MkfsOptions, source: str, target: str) -> list[str]:
    if options.fstype is FsType.VFAT:
        # vfat has no symlinks, owners or modes: copy what links point to.
        return ["cp", "-RL", "--preserve=timestamps", f"{source}/.", f"{target}/"]
    return ["cp", "-a", f"{source}/.", f"{target}/"]


def luks_open_steps(key: str, device: str) -> list[list[str]]:
    return [
        ["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", key,
         device],
        ["cryptsetup", "open", "--type", "luks2", "--key-file", key, device, MAPPER_NAME],
    ]


def guest_device(options: MkfsOptions) -> str:
    if options.partition is Partitioning.GPT and not options.fstype.writes_file:
        return f"{GUEST_DISK}-part1"
    return GUEST_DISK


# chown(2) clears setuid/setgid bits (for root too: Linux does, fakeroot
# does not), so the bits are noted before and put back after: an image of a
# tree with a setuid program keeps it, as `fakeroot mkfs.ext4 -d` does.
_CHOWN_KEEPING_SETID = """set -e
tree=$1; shift
list=$(mktemp)
find "$tree" ! -type l \\( -perm -4000 -o -perm -2000 \\) -printf '%m %p\\0' > "$list"
for owner in "$@"; do chown -hR $owner "$tree"; done
xargs -0 -r -n1 sh -c 'chmod "${1%% *}" "${1#* }"' restore < "$list"
rm -f "$list"
"""


def chown_keeping_setid(mnt: str, *owners: str) -> list[str]:
    """One guest step: `chown -hR OWNER mnt` for each OWNER (word-split, so
    `--from=1000 0`), keeping setuid/setgid bits."""
    return ["sh", "-c", _CHOWN_KEEPING_SETID, "chown-keeping-setid", mnt, *owners]


def root_owner_steps(options: MkfsOptions, mnt: str) -> list[list[str]]:
    """Hand the files that the host's `mkfs.ext4 -d` copied with their host
    owners to root: all of them, or (yours as root) only yours."""
    if options.owners is Owners.ALL_ROOT:
        return [chown_keeping_setid(mnt, "0:0")]
    return [chown_keeping_setid(mnt, f"--from={os.getuid()} 0", f"--from=:{os.getgid()} :0")]


def _fill_mounted(options: MkfsOptions, kind: SourceKind, source: str,
                  device: str) -> list[list[str]]:
    mnt = f"{MOUNT_POINT}/fs"
    steps = [["mkdir", "-p", mnt], ["mount", device, mnt]]
    if kind is SourceKind.TARBALL:
        steps.append(extract_argv(options, source, mnt))
    else:
        steps.append(copy_argv(options, source, mnt))
        if options.owners is Owners.ALL_ROOT and options.fstype is not FsType.VFAT:
            steps.append(chown_keeping_setid(mnt, "0:0"))
    steps.append(["umount", mnt])
    return steps


def guest_steps(options: MkfsOptions, kind: SourceKind, content: Content | None) -> list[list[str]]:
    source = str(options.source)
    device = guest_device(options)
    if ext4_prefilled_on_host(options, kind):
        mnt = f"{MOUNT_POINT}/fs"
        return [["mkdir", "-p", mnt], ["mount", device, mnt], *root_owner_steps(options, mnt),
                ["umount", mnt]]
    if options.fstype.writes_file:
        steps: list[list[str]] = []
        if kind is SourceKind.TARBALL:
            steps += [["mkdir", "-p", EXTRACT_DIR], extract_argv(options, source, EXTRACT_DIR)]
            source = EXTRACT_DIR
        return [*steps, read_only_argv(options, source, device)]
    steps = []
    if options.luks_key is not None:
        steps += luks_open_steps(str(options.luks_key), device)
        device = f"/dev/mapper/{MAPPER_NAME}"
    steps.append(mkfs_argv(options, content, device))
    steps += _fill_mounted(options, kind, source, device)
    if options.luks_key is not None:
        steps.append(["cryptsetup", "close", MAPPER_NAME])
    return steps


def host_steps(options: MkfsOptions, kind: SourceKind, content: Content | None,
               image: Path, size: int) -> list[list[str]]:
    """Before the guest (or instead of it): the offline tools' part."""
    if host_only(options, kind) and options.fstype.writes_file:
        return [read_only_argv(options, str(options.source), str(image))]
    if host_only(options, kind) or ext4_prefilled_on_host(options, kind):
        if options.partition is Partitioning.GPT:
            fs_size = size - 2 * GPT_HEAD
            return [ext4_argv(options, content, str(image), str(options.source),
                              host_offset=GPT_HEAD, size=fs_size)]
        return [ext4_argv(options, content, str(image), str(options.source), size=size)]
    return []


def make_plan(options: MkfsOptions, kind: SourceKind, content: Content | None,
              image: Path, size: int) -> Plan:
    host = host_steps(options, kind, content, image, size)
    guest = [] if host_only(options, kind) else guest_steps(options, kind, content)
    return Plan(host=host, guest=guest)
