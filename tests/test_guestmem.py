"""What `umlroot run` says when the guest's memory cannot be had, from
kernel logs recorded on real failures."""

from __future__ import annotations

from pathlib import Path

from umlroot.kernel import memory as guestmem
from umlroot.kernel import patches

DATA = Path(__file__).parent / "data"


def test_noexec_directory() -> None:
    problem = guestmem.diagnose((DATA / "probe-noexec-tmpdir.txt").read_text())
    assert problem is not None
    assert problem.message("1G") == ("the guest's memory (1G) could not be had: UML maps it "
                                     "from a file in /mnt/noexec, which is mounted noexec")


def test_memory_file_out_of_space() -> None:
    """Recorded: `run -- sh -c 'head -c 300M /dev/zero > /run/x'` with a 64 MiB
    exec-capable /dev/shm and a kernel without memfd. Under `quiet` the log
    does not name the directory; the runner passes the one it knows."""
    console = (DATA / "run-sigbus-64m-shm.txt").read_text()
    problem = guestmem.diagnose(console, "/dev/shm")
    assert problem is not None and problem.directory == "/dev/shm"
    message = problem.message("1G")
    assert message.startswith("the guest's memory (1G) could not be had: UML maps it from a "
                              "file in /dev/shm")
    assert message.endswith("which ran out of space: the host sent SIGBUS when the guest "
                            "touched more memory than the file could hold")


def test_a_healthy_boot_is_no_memory_problem() -> None:
    assert guestmem.diagnose((DATA / "probe-ok-7.3.txt").read_text()) is None


def test_backing_follows_the_record() -> None:
    assert guestmem.backing(None) is guestmem.Backing.UNKNOWN
    assert guestmem.backing(()) is guestmem.Backing.DIRECTORY
    assert guestmem.backing(("0004-um-back-physical-memory-with-memfd.patch",)) is \
        guestmem.Backing.MEMFD


def test_records_without_a_patch_list_are_inferred_from_the_build_id() -> None:
    text = "CONFIG_X=y\n"
    current = patches.build_id(text)
    shipped = tuple(p.name for p in patches.shipped_patches())
    assert patches.carried(None, current, text) == shipped
    assert patches.carried(None, "someotherid", text) is None
    assert patches.carried(("a.patch",), "someotherid", text) == ("a.patch",)
