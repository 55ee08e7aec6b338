"""A GPT disk image with one partition, written on the host with sfdisk.

sfdisk works on an image file without privileges. The partition starts at
1 MiB and ends 1 MiB before the end (room for the backup table), both
aligned as partitioning tools do by default.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from umlroot import log
from umlroot.errors import UmlrootError
from umlroot.images.size import GPT_HEAD, GPT_TAIL
from umlroot.guest.scratch import find_tool

SECTOR = 512
_COPY_CHUNK = 1 << 30


def write_gpt(disk: Path, partition_type: str) -> None:
    """Write a GPT to DISK (already at its final size) with one partition
    of PARTITION_TYPE spanning it; the data in between is not touched."""
    sfdisk = find_tool("sfdisk")
    if sfdisk is None:
        raise UmlrootError("sfdisk not found (needed for --partition)", hint="install fdisk")
    sectors = (disk.stat().st_size - GPT_HEAD - GPT_TAIL) // SECTOR
    script = f"label: gpt\nstart={GPT_HEAD // SECTOR}, size={sectors}, type={partition_type}\n"
    argv = [sfdisk, "--quiet", "--wipe", "never", "--no-reread", "--no-tell-kernel", str(disk)]
    log.show_command(argv)
    result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise UmlrootError(f"sfdisk failed with status {result.returncode}: "
                           f"{lines[-1] if lines else 'no message'}")


def wrap_in_gpt(image: Path, disk: Path, partition_type: str) -> None:
    """Make DISK a GPT disk whose one partition holds IMAGE (an image file
    made before its size was known: squashfs, erofs)."""
    length = image.stat().st_size
    part = -(-length // GPT_HEAD) * GPT_HEAD
    with open(disk, "wb") as out:
        out.truncate(GPT_HEAD + part + GPT_TAIL)
    write_gpt(disk, partition_type)
    with open(image, "rb") as src, open(disk, "r+b") as dst:
        offset = 0
        while offset < length:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), min(_COPY_CHUNK, length - offset),
                                        offset, GPT_HEAD + offset)
            if copied == 0:
                raise UmlrootError(f"{image}: shorter than it was a moment ago")
            offset += copied
