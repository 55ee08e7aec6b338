"""The scratch disk: a sparse ext4 image that holds the overlay's upper layer."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from umlroot import log
from umlroot.errors import UmlrootError

# Sparse: the host only stores what the guest writes.
SCRATCH_SIZE = 64 << 30
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def find_tool(name: str) -> str | None:
    """Find a tool on PATH or in the sbin directories (not on a user's PATH
    on Debian, where mkfs.ext4 lives)."""
    found = shutil.which(name)
    if found is None:
        found = shutil.which(name, path=_SBIN)
    return found


# A new sparse file reads as zeros: without this, mke2fs "zeroes" the inode
# tables with fallocate(ZERO_RANGE), which costs host disk space and time for
# every scratch disk (docs/architecture.md, "Figures").
_PREZEROED = "assume_storage_prezeroed=1"


def _mkfs(mkfs: str, features: list[str], extended: str,
          image: Path) -> subprocess.CompletedProcess[str]:
    argv = [mkfs, "-q", "-F", "-m", "0", *features, "-E", extended, str(image)]
    log.show_command(argv)
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def format_ext4(image: Path, size: int, *, durable: bool) -> None:
    """Create `image` as a sparse file of `size` bytes holding a fresh ext4.

    Made on the host, because mkfs inside UML pays a guest syscall for
    every step. A durable image (a --state file) keeps the journal and
    metadata checksums; a throwaway scratch disk drops both, as checksums
    cost guest CPU on every metadata write (docs/architecture.md, "Figures").
    """
    mkfs = find_tool("mkfs.ext4")
    if mkfs is None:
        raise UmlrootError("mkfs.ext4 not found", hint="install e2fsprogs")
    with open(image, "wb") as f:
        f.truncate(size)
    features = [] if durable else ["-O", "^has_journal,^metadata_csum"]
    extended = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
    result = _mkfs(mkfs, features, f"{extended},{_PREZEROED}", image)
    if result.returncode != 0 and _PREZEROED in result.stderr:
        result = _mkfs(mkfs, features, extended, image)  # e2fsprogs before 1.47
    if result.returncode != 0:
        raise UmlrootError(
            f"mkfs.ext4 failed with status {result.returncode}: {result.stderr.strip()}")


def create_scratch(image: Path) -> None:
    """A throwaway scratch disk (a crash discards it anyway)."""
    format_ext4(image, SCRATCH_SIZE, durable=False)
