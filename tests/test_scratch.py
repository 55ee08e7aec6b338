"""The scratch disk, made on the host with the host's mkfs.ext4."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from umlroot.scratch import SCRATCH_SIZE, create_scratch, find_tool

pytestmark = pytest.mark.skipif(find_tool("mkfs.ext4") is None, reason="needs e2fsprogs")


def test_scratch_is_a_clean_sparse_ext4(tmp_path: Path) -> None:
    image = tmp_path / "scratch.img"
    create_scratch(image)
    st = image.stat()
    assert st.st_size == SCRATCH_SIZE
    # The inode tables are not "zeroed" with fallocate: a 64 GiB scratch
    # takes a few MB of the host's disk (1.1 GB before).
    assert st.st_blocks * 512 < 64 << 20
    fsck = subprocess.run([find_tool("e2fsck"), "-fn", str(image)], capture_output=True,
                          text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
