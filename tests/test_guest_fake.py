"""Guest and session logic against a fake starter (tests/fake_uml.py): no
kernel boots, so these run everywhere and fast."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fake_uml import FakeScript, FakeStarter

from umlroot import (
    Guest,
    GuestClosedError,
    GuestError,
    LostWritesError,
    MachineConfig,
    TimeoutExpired,
    UmlrootError,
)
from umlroot.guest import handle
from umlroot.kernel.select import KernelChoice, Origin


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fake needs no kernel and no guest init."""
    kernel = KernelChoice(path=tmp_path / "linux", version="7.3", origin=Origin.OPTION,
                          reason="a fake",
                          patches=("0005-memfd", "0008-hostfs-map-the-invoking-users-files-to-root"))
    monkeypatch.setattr(handle, "find_kernel", lambda _path: kernel)
    monkeypatch.setattr(handle, "build_guest_init", lambda: tmp_path / "init")


def test_run_relays_output_and_status(tmp_path: Path) -> None:
    script = FakeScript(stdout=b"hello\n", status=3)
    with Guest(MachineConfig(cwd=tmp_path), starter=FakeStarter(script)) as guest:
        result = guest.run(["anything"], capture_output=True)
        assert (result.returncode, result.stdout) == (3, b"hello\n")
        assert result.finished
    assert script.seen[0] == "r 1"
    assert script.seen[-1] == "q 1"


def test_keywords_map_onto_the_config(tmp_path: Path) -> None:
    script = FakeScript()
    with Guest(cwd=tmp_path, mem="256M", starter=FakeStarter(script)) as guest:
        assert guest.options == MachineConfig(cwd=tmp_path, mem="256M")
    assert "mem=256M" in script.started[0].argv


def test_one_shot_run_powers_off(tmp_path: Path) -> None:
    script = FakeScript(stdout=b"out", status=0)
    result = handle.run(["x"], capture_output=True, cwd=tmp_path, starter=FakeStarter(script))
    assert (result.returncode, result.stdout, result.finished) == (0, b"out", True)
    assert script.seen[0] == "r 1 last"
    assert script.started[0].poll() is not None


def test_boot_error_is_one_line(tmp_path: Path) -> None:
    script = FakeScript(boot_error="mount /proc: Permission denied")
    with pytest.raises(GuestError, match=r"mount /proc: Permission denied"):
        Guest(cwd=tmp_path, starter=FakeStarter(script))


def test_crash_during_a_command(tmp_path: Path) -> None:
    script = FakeScript(crash_in_command=True)
    with Guest(cwd=tmp_path, starter=FakeStarter(script)) as guest:
        with pytest.raises(GuestError, match="crashed while running the command"):
            guest.run(["x"])
        with pytest.raises(GuestClosedError):
            guest.run(["x"])


def test_writeback_and_close_have_deadlines(tmp_path: Path) -> None:
    script = FakeScript(hang_writeback=True)
    guest = Guest(cwd=tmp_path, starter=FakeStarter(script))
    with pytest.raises(TimeoutExpired, match="writeback took longer than 0.3 s"):
        guest.writeback(timeout=0.3)
    assert not guest.alive
    guest.close()  # nothing left to wait for


def test_close_times_out_on_a_silent_guest(tmp_path: Path) -> None:
    script = FakeScript(hang_writeback=True)
    guest = Guest(cwd=tmp_path, starter=FakeStarter(script))
    with pytest.raises(TimeoutExpired):
        guest.close(timeout=0.3)
    assert script.started[0].poll() is not None  # killed


def test_probe_timeout_kills_the_process_group(tmp_path: Path) -> None:
    """The probe starts UML through the starter and kills its whole group
    when it does not finish in time (a stand-in "kernel": sh with a child)."""
    from umlroot.kernel import probe
    from umlroot.kernel.uml import RealStarter

    class ShellStarter(RealStarter):
        def start(self, argv, *, output, pass_fds=()):  # type: ignore[no-untyped-def]
            return super().start(["sh", "-c", "sleep 60 & echo $! > " + str(tmp_path / "child")
                                  + "; wait"], output=output)

    result, _ = probe.boot_probe(tmp_path / "linux", timeout=0.5, starter=ShellStarter())
    assert result.status is probe.ProbeStatus.TIMEOUT
    child = int((tmp_path / "child").read_text())
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True,
                           text=True, check=False).stdout.strip()
    assert state in ("", "Z")  # gone (or a zombie of init's)


def test_lost_writes_fail_a_one_shot_run(tmp_path: Path) -> None:
    """The guest lost writes to its scratch disk: 125, whatever the command
    said, and the line names the device's host file, the error and the room."""
    script = FakeScript(status=0, lost="ubda:3:28")
    result = handle.run(["x"], capture_output=True, cwd=tmp_path, starter=FakeStarter(script))
    assert result.returncode == 125
    assert result.error is not None
    assert result.error.startswith("the host could not store 3 writes to the scratch disk "
                                   "(No space left on device in ")
    assert result.error.endswith("set TMPDIR to a larger filesystem; nothing was written back")
    assert result.writeback is not None and not result.writeback.delivered()


def test_lost_writes_raise_at_writeback_and_close(tmp_path: Path) -> None:
    script = FakeScript(lost="ubda:1:5")
    guest = Guest(cwd=tmp_path, starter=FakeStarter(script))
    with pytest.raises(LostWritesError, match="Input/output error"):
        guest.writeback()
    with pytest.raises(LostWritesError) as caught:
        guest.close()
    assert caught.value.exit_code == 125


def test_a_kernel_without_the_owner_mapping_is_refused_before_booting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = KernelChoice(path=tmp_path / "linux", version="7.3", origin=Origin.OPTION,
                       reason="a fake", patches=("0005-memfd",))
    monkeypatch.setattr(handle, "find_kernel", lambda _path: old)
    script = FakeScript()
    with pytest.raises(UmlrootError, match="cannot show your files as root's"):
        Guest(cwd=tmp_path, starter=FakeStarter(script))
    assert script.started == []
    with Guest(cwd=tmp_path, real_owners=True, starter=FakeStarter(script)):
        pass
