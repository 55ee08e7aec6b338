"""The scratch disk, made on the host with the host's mkfs.ext4."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from umlroot.guest.scratch import SCRATCH_SIZE, create_scratch, find_tool

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


def test_older_mke2fs_without_prezeroed_option_still_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """e2fsprogs before 1.47 rejects assume_storage_prezeroed: umlroot retries without it."""
    real = find_tool("mkfs.ext4")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    fake = fake_bin / "mkfs.ext4"
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
*assume_storage_prezeroed*) echo "Bad option(s) specified: assume_storage_prezeroed=1" >&2; exit 1;;
esac
exec {real} "$@"
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    image = tmp_path / "scratch.img"
    create_scratch(image)
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and "assume_storage_prezeroed" not in lines[1]
    assert image.stat().st_size == SCRATCH_SIZE
