"""How large an image `umlroot mkfs` makes when `--size` does not say.

The content is measured on the host (a directory walk, or a tarball's
member list); each filesystem then gets room for its own metadata and a
floor below which its mkfs refuses to work. The image files are sparse, so
generous sizes cost no disk space on the host, only an emptier filesystem.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from umlroot.errors import UmlrootError
from umlroot.images.options import (
    MIB,
    FsType,
    MkfsOptions,
    Partitioning,
    SizeSpec,
    SourceKind,
)

BLOCK = 4096
# LUKS2's default header (with its key slot area) takes 16 MiB.
LUKS_HEADER = 16 * MIB
# --partition gpt: the partition starts at 1 MiB; the backup table needs
# 33 sectors at the end, rounded to 1 MiB too.
GPT_HEAD = MIB
GPT_TAIL = MIB

# Below these, the tools refuse to make the filesystem: xfsprogs 6.x wants
# 300 MiB; mkfs.btrfs about 110 MiB with its default (DUP metadata) profile.
MINIMUM = {FsType.EXT4: 8 * MIB, FsType.BTRFS: 128 * MIB, FsType.XFS: 300 * MIB,
           FsType.VFAT: 36 * MIB, FsType.SQUASHFS: MIB, FsType.EROFS: MIB,
           FsType.ISO9660: MIB}


@dataclass(frozen=True)
class Content:
    data: int     # file data, each file rounded up to a 4 KiB block
    entries: int  # files, directories, links, nodes


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def measure_directory(top: Path) -> Content:
    data, entries = 0, 1
    stack = [str(top)]
    try:
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        data += _round_up(entry.stat(follow_symlinks=False).st_size, BLOCK)
    except OSError as error:
        raise UmlrootError(f"SOURCE {top}: cannot read {error.filename}: {error.strerror}",
                           hint="give --size to skip measuring the content") from None
    return Content(data=data, entries=entries)


def measure_tarball(path: Path) -> Content:
    data, entries = 0, 1
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                entries += 1
                if member.isfile():
                    data += _round_up(member.size, BLOCK)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UmlrootError(f"SOURCE {path}: cannot read it as a tar archive ({error})",
                           hint="give --size when the archive's compression is one Python's "
                                "tarfile cannot read (zstd)") from None
    return Content(data=data, entries=entries)


def measure(source: Path, kind: SourceKind) -> Content:
    if kind is SourceKind.DIRECTORY:
        return measure_directory(source)
    return measure_tarball(source)


def filesystem_size(fstype: FsType, content: Content) -> int:
    """Room for CONTENT in a fresh filesystem of FSTYPE (for the read-only
    types: an upper bound of the uncompressed image, trimmed afterwards)."""
    data, entries = content.data, content.entries
    if fstype is FsType.EXT4:
        # Inodes, directory blocks, the journal (16-64 MiB at these sizes).
        need = data + data // 8 + entries * 1024 + 64 * MIB
    elif fstype is FsType.BTRFS:
        # Metadata is DUP on one device and small files live inline in it.
        need = data + data // 2 + entries * 8192 + 128 * MIB
    elif fstype is FsType.XFS:
        need = data + data // 5 + entries * 2048 + 64 * MIB
    elif fstype is FsType.VFAT:
        need = data + data // 8 + entries * 4096 + 16 * MIB
    else:
        need = data + data // 10 + entries * 4096 + 16 * MIB
    return max(_round_up(need, MIB), MINIMUM[fstype])


def ext4_inodes(content: Content) -> int:
    """mkfs.ext4 gives one inode per 16 KiB by default: too few for a tree of
    small files in an image sized to fit."""
    return content.entries + content.entries // 4 + 1024


def overhead(options: MkfsOptions) -> int:
    """What the image holds besides the filesystem."""
    extra = LUKS_HEADER if options.luks_key is not None else 0
    if options.partition is Partitioning.GPT:
        extra += GPT_HEAD + GPT_TAIL
    return extra


def image_size(options: MkfsOptions, content: Content | None) -> int:
    """The size of OUTPUT (for the read-only types: of the disk it is written
    to, before trimming). `--size N` is OUTPUT's size; `--size +N` adds N
    to the computed one."""
    spec: SizeSpec | None = options.size
    if spec is not None and not spec.relative:
        size = _round_up(spec.value, MIB)
        room = size - overhead(options)
        if room < MINIMUM[options.fstype]:
            raise UmlrootError(
                f"--size {spec.value // MIB} MiB: too small; {options.fstype} needs at least "
                f"{(MINIMUM[options.fstype] + overhead(options)) // MIB} MiB here")
        return size
    assert content is not None
    size = filesystem_size(options.fstype, content) + overhead(options)
    if spec is not None:
        size += _round_up(spec.value, MIB)
    return size
