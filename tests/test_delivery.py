"""Whether a run's output arrived: pure logic (no guest). The real faults are
in test_faults.py."""

from __future__ import annotations

import errno
from pathlib import Path

from umlroot.errors import ExitCode
from umlroot.process import with_delivery
from umlroot.rundir import filesystem_type
from umlroot.writeback import (
    BlockStore,
    Entry,
    Kind,
    LostWrites,
    WritebackReport,
    load,
    lost_writes_line,
    parse_lost,
)

MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
tmpfs /tmp/a\\040b tmpfs rw 0 0
/dev/vdb /tmp/disk ext4 rw 0 0
"""


def test_filesystem_type_is_the_longest_mount_above() -> None:
    assert filesystem_type(Path("/var/tmp"), MOUNTS) == "ext4"
    assert filesystem_type(Path("/tmp/x"), MOUNTS) == "tmpfs"
    assert filesystem_type(Path("/tmp/disk/y"), MOUNTS) == "ext4"
    assert filesystem_type(Path("/tmp/diskette"), MOUNTS) == "tmpfs"
    assert filesystem_type(Path("/tmp/a b/c"), MOUNTS) == "tmpfs"


def test_lost_lines_parse_and_junk_is_ignored() -> None:
    assert parse_lost("ubda:3:28 ubdc:1:5 junk ubdd:x:1") == (
        LostWrites("ubda", 3, 28), LostWrites("ubdc", 1, 5))
    assert parse_lost(None) == ()


def test_report_from_the_guest_lines(tmp_path: Path) -> None:
    assert load("none", tmp_path) is None
    lost_before = load("lost", tmp_path, lost="ubda:2:28")
    assert lost_before is not None and lost_before.skipped and not lost_before.delivered()
    lost_after = load("none", tmp_path, lost="ubdb:1:28")
    assert lost_after is not None and not lost_after.skipped and not lost_after.delivered()
    fine = load("files=2 failed=0", tmp_path)
    assert fine is not None and fine.delivered()


def test_denied_fails_only_where_you_named_the_scope() -> None:
    entries = [Entry(Kind.DENIED, "/etc/x", "create: Permission denied")]
    named = WritebackReport({"denied": 1}, entries)
    assert not named.delivered() and named.undelivered == entries
    everything = WritebackReport({"denied": 1}, entries, denied_fails=False)
    assert everything.delivered() and everything.undelivered == []
    for key in ("failed", "conflicts"):
        assert not WritebackReport({key: 1}, denied_fails=False).delivered()


def test_the_lost_writes_line_names_file_error_and_room(tmp_path: Path) -> None:
    stores = {"ubda": BlockStore("the scratch disk", tmp_path,
                                 "set TMPDIR to a larger filesystem")}
    line = lost_writes_line([LostWrites("ubda", 3, errno.ENOSPC)], stores, written_back=False)
    assert line.startswith("the host could not store 3 writes to the scratch disk "
                           f"(No space left on device in {tmp_path}: ")
    assert " MiB free); set TMPDIR to a larger filesystem; nothing was written back" in line
    unknown = lost_writes_line([LostWrites("ubdq", 1, 0)], stores, written_back=True)
    assert "1 write to /dev/ubdq (an I/O error" in unknown
    assert "written back" not in unknown


def test_status_once_output_is_accounted_for() -> None:
    delivered = WritebackReport({"files": 1})
    failed = WritebackReport({"failed": 1})
    assert with_delivery(0, None, delivered, None) == (0, None)
    assert with_delivery(0, None, None, None) == (0, None)
    # The command succeeded, its output did not arrive: umlroot failed.
    assert with_delivery(0, None, failed, None) == (ExitCode.UMLROOT, None)
    # A failed command keeps its own status.
    assert with_delivery(3, None, failed, None) == (3, None)
    # Lost writes fail every run, whatever the command said.
    assert with_delivery(3, None, failed, "lost") == (ExitCode.UMLROOT, "lost")
    assert with_delivery(0, None, None, "lost") == (ExitCode.UMLROOT, "lost")
