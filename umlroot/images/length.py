"""The real length of a squashfs, erofs or iso9660 image at the start of a
larger file.

In the guest, mksquashfs, mkfs.erofs and xorriso write straight to the
output disk (no copy through the guest's filesystem), which has to be
sized before the image is known. Each format records its own length in
its superblock; the host reads it there and cuts the file to it.
"""

from __future__ import annotations

import struct
from pathlib import Path

from umlroot.errors import UmlrootError
from umlroot.images.options import FsType

SQUASHFS_MAGIC = b"hsqs"
EROFS_MAGIC = 0xE0F5E1E2
EROFS_SB = 1024
ISO_PVD = 16 * 2048
# mksquashfs pads its output to 4 KiB so that it can be loop-mounted.
SQUASHFS_PAD = 4096


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise UmlrootError(f"{path}: too short for a filesystem image")
    return data


def squashfs_length(path: Path) -> int:
    sb = _read(path, 0, 96)
    if sb[:4] != SQUASHFS_MAGIC:
        raise UmlrootError(f"{path}: no squashfs superblock")
    bytes_used = int(struct.unpack_from("<Q", sb, 40)[0])
    return -(-bytes_used // SQUASHFS_PAD) * SQUASHFS_PAD


def erofs_length(path: Path) -> int:
    sb = _read(path, EROFS_SB, 128)
    magic = int(struct.unpack_from("<I", sb, 0)[0])
    if magic != EROFS_MAGIC:
        raise UmlrootError(f"{path}: no erofs superblock")
    blkszbits = sb[12]
    blocks = int(struct.unpack_from("<I", sb, 36)[0])
    return blocks << blkszbits


def iso9660_length(path: Path) -> int:
    pvd = _read(path, ISO_PVD, 2048)
    if pvd[:6] != b"\x01CD001":
        raise UmlrootError(f"{path}: no iso9660 primary volume descriptor")
    blocks = int(struct.unpack_from("<I", pvd, 80)[0])
    block_size = int(struct.unpack_from("<H", pvd, 128)[0])
    return blocks * block_size


def image_length(fstype: FsType, path: Path) -> int:
    readers = {FsType.SQUASHFS: squashfs_length, FsType.EROFS: erofs_length,
               FsType.ISO9660: iso9660_length}
    return readers[fstype](path)
