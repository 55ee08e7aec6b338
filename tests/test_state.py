"""`--state FILE`: root-only metadata survives between runs; one run at a time."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import UMLROOT, run_umlroot

from umlroot.errors import UmlrootError
from umlroot.guest.scratch import find_tool
from umlroot.guest.state import FORMAT, META_NAME, create_state, open_state, read_info

uml = pytest.mark.uml


def test_info_of_fresh_state(tmp_path: Path) -> None:
    state = tmp_path / "s.img"
    create_state(state)
    info = read_info(state)
    assert (info.format, info.runs, info.paths) == (FORMAT, 0, 0)
    assert info.allocated < 64 << 20  # sparse
    result = run_umlroot(["state", "info", str(state)])
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "runs:      0" in out and "64.0 GiB" in out


def test_info_of_something_else(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an ext4 image" * 1000)
    result = run_umlroot(["state", "info", str(junk)])
    assert result.returncode == 125
    assert result.stderr.decode().startswith(f"umlroot: {junk} is not a umlroot state file")
    assert b"Traceback" not in result.stderr


def test_guest_mount_failure_names_the_state(tmp_path: Path) -> None:
    state = tmp_path / "s.img"
    with pytest.raises(UmlrootError) as caught, open_state(state, wait=False) as image:
        assert image == state and read_info(state).runs == 0
        raise UmlrootError("the guest failed to start: mount scratch disk /dev/ubda: "
                           "Structure needs cleaning")
    assert caught.value.message == (
        f"the state file {state} cannot be mounted in the guest (damaged, or not made by "
        "umlroot): Structure needs cleaning")


@uml
def test_state_from_newer_umlroot(tmp_path: Path) -> None:
    state = tmp_path / "s.img"
    create_state(state)
    meta = tmp_path / "meta"
    meta.write_text(f"format={FORMAT + 1}\ncreated=1\nruns=0\n")
    # debugfs lives in /sbin, off an ordinary user's PATH on Debian.
    debugfs = find_tool("debugfs")
    assert debugfs is not None
    subprocess.run([debugfs, "-w", "-R", f"rm {META_NAME}", str(state)],
                   check=True, capture_output=True)
    subprocess.run([debugfs, "-w", "-R", f"write {meta} {META_NAME}", str(state)],
                   check=True, capture_output=True)
    result = run_umlroot(["run", "--state", str(state), "--", "true"], cwd=tmp_path)
    assert result.returncode == 125
    assert b"was made by a newer umlroot" in result.stderr


@uml
def test_owner_and_device_survive(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    work.mkdir()
    (work / "f").write_text("data\n")
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                         "chown 1234:5678 f && mknod d c 1 3"], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    assert b"kept only inside (in the --state file): 1 device node, 1 owner change" in first.stderr
    second = run_umlroot(["run", "--state", str(state), "--", "stat", "-c", "%u:%g %F %t,%T",
                          "f", "d"], cwd=work)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().splitlines() == ["1234:5678 regular file 0,0",
                                                   "0:0 character special file 1,3"]
    info = read_info(state)
    assert info.runs == 2
    assert info.paths >= 3  # dirs down to work, f, d


@uml
def test_host_content_wins_over_stale_state(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    (tmp_path / "f").write_text("first\n")
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                         "chown 1234:5678 f && chmod 600 f && echo guest > g && chown 42 g"],
                        cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    (tmp_path / "f").write_text("changed on the host, longer\n")
    (tmp_path / "g").write_text("host g\n")
    second = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                          "stat -c '%u:%g %a %s' f g && cat f g"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().splitlines() == [
        "1234:5678 600 28", "42:0 644 7", "changed on the host, longer", "host g"]


@uml
def test_concurrent_runs_on_one_state(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    holder = subprocess.Popen(
        [*UMLROOT, "run", "--state", str(state), "--", "sh", "-c", "echo started; sleep 3"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == b"started\n"
        refused = run_umlroot(["run", "--no-wait", "--state", str(state), "--", "true"],
                              cwd=tmp_path)
        assert refused.returncode == 125
        assert refused.stderr.decode().startswith(
            f"umlroot: the state file {state} is in use by another umlroot run")
        started = time.monotonic()
        waited = run_umlroot(["run", "--state", str(state), "--", "echo", "second"],
                             cwd=tmp_path)
        assert waited.returncode == 0, waited.stderr.decode()
        assert waited.stdout == b"second\n"
        assert b"waiting for the state file" in waited.stderr
        assert holder.wait(timeout=60) == 0
        assert time.monotonic() - started > 0.5
    finally:
        holder.kill()
        holder.wait()
    assert read_info(state).runs == 2


@uml
def test_damaged_state_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    assert run_umlroot(["run", "--state", str(state), "--", "true"], cwd=tmp_path).returncode == 0
    with open(state, "r+b") as f:  # wipe the superblock's neighbourhood
        f.seek(1024)
        f.write(b"\0" * 4096)
    result = run_umlroot(["run", "--state", str(state), "--", "true"], cwd=tmp_path)
    assert result.returncode == 125
    err = result.stderr.decode()
    assert str(state) in err.splitlines()[0]
    assert "Traceback" not in err


@uml
def test_host_recreates_what_the_state_deleted(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    work.mkdir()
    (work / "f").write_text("old\n")
    first = run_umlroot(["run", "--state", str(state), "--", "rm", "f"], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    assert not (work / "f").exists()
    (work / "f").write_text("made again on the host\n")
    second = run_umlroot(["run", "--state", str(state), "--", "cat", "f"], cwd=work)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout == b"made again on the host\n"
    assert (work / "f").read_text() == "made again on the host\n"


@uml
def test_host_deletions_win_over_the_state(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    (work / "tree").mkdir(parents=True)
    (work / "tree/host-file").write_text("from the host\n")
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                         ("mkdir made && echo x > made/new && chown -R 0:0 tree && "
                          "mknod tree/dev c 1 3")], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    assert (work / "made/new").read_text() == "x\n"
    (work / "tree/host-file").unlink()
    (work / "made/new").unlink()
    (work / "made").rmdir()
    second = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                          "ls -A tree; ls -A made 2>&1 || echo no made"], cwd=work)
    assert second.returncode == 0, second.stderr.decode()
    # The device node was only ever inside: it stays. The rest follows the host.
    assert second.stdout.decode().splitlines()[0] == "dev"
    assert second.stdout.decode().splitlines()[-1] == "no made"
    assert not (work / "made").exists()


@uml
def test_host_edit_between_runs_is_not_reverted(tmp_path: Path) -> None:
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    work.mkdir()
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                         "mkdir new && echo guest > new/f && chown 7:7 new/f"], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    (work / "new/f").write_text("edited on the host\n")
    second = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                          "stat -c %u:%g new/f && cat new/f"], cwd=work)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().splitlines() == ["7:7", "edited on the host"]
    assert (work / "new/f").read_text() == "edited on the host\n"


def _tree(top: Path) -> dict[str, str]:
    """Each path under `top`: a file's content, or "dir"."""
    return {str(p.relative_to(top)): "dir" if p.is_dir() else p.read_text()
            for p in sorted(top.rglob("*"))}


NESTED_SETUP = "mkdir -p new/a/b && echo 1 > new/a/f1 && echo 2 > new/f2 && echo 3 > new/a/b/f3"


@uml
@pytest.mark.parametrize("change", [
    "rm new/a/f1",
    "rm new/a/b/f3",
    "rm -r new/a/b",
    "rm -r new/a",
    "mv new/a/f1 new/a/g1",
    "mv new/a/b/f3 new/f3",
    "mv new/a/b new/c",
    "echo changed > new/a/f1",
    "echo changed > new/a/b/f3",
    "echo 4 > new/a/b/f4 && mkdir new/a/b/c && echo 5 > new/a/b/c/f5",
    "rm -r new/a && mkdir -p new/a/b && echo 6 > new/a/b/f6",
])
def test_later_run_changes_dirs_an_earlier_run_made(tmp_path: Path, change: str) -> None:
    """Dirs a --state run made (and wrote back) hold nothing of the host's in
    the next run: only the top one is opaque, and a file deleted below it
    leaves no whiteout. Whatever the next run does there reaches the host,
    as the same commands would leave it natively."""
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    native = tmp_path / "native"
    work.mkdir()
    native.mkdir()
    subprocess.run(["sh", "-c", f"{NESTED_SETUP} && {change}"], cwd=native, check=True)
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c", NESTED_SETUP], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    second = run_umlroot(["run", "--state", str(state), "--", "sh", "-c", change], cwd=work)
    assert second.returncode == 0, second.stderr.decode()
    assert _tree(work) == _tree(native)
    # The state agrees with the host, and a third run has nothing to write back.
    third = run_umlroot(["run", "--verbose", "--state", str(state), "--", "sh", "-c",
                         "find new | sort"], cwd=work)
    assert third.returncode == 0, third.stderr.decode()
    assert third.stdout.decode().splitlines() == sorted(
        ["new", *(f"new/{p}" for p in _tree(work / "new"))])
    assert b"wrote back: nothing" in third.stderr
    assert _tree(work) == _tree(native)


@uml
def test_dir_below_a_remade_dir_loses_host_entries(tmp_path: Path) -> None:
    """The same without --state: in `rm -r d; mkdir -p d/a`, d is opaque but
    d/a is not, and nothing of the host's d/a shows through it."""
    (tmp_path / "d/a").mkdir(parents=True)
    (tmp_path / "d/a/old").write_text("old\n")
    (tmp_path / "d/keep-not").write_text("old\n")
    result = run_umlroot(["run", "--", "sh", "-c",
                          "rm -r d && mkdir -p d/a/b && echo n > d/a/new && ls -A d/a"],
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"b\nnew\n"
    assert _tree(tmp_path / "d") == {"a": "dir", "a/b": "dir", "a/new": "n\n"}


@uml
def test_host_additions_in_dirs_the_state_made(tmp_path: Path) -> None:
    """What the host adds between runs under dirs a --state run made shows
    inside the next run (the opaque dir hides the host's entries, so the
    init copies them in) and is not deleted from the host by its writeback;
    a later run's deletion of it reaches the host."""
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    work.mkdir()
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c", NESTED_SETUP], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    (work / "new/host-top").write_text("top\n")
    (work / "new/a/b/hostdir/sub").mkdir(parents=True)
    (work / "new/a/b/hostdir/sub/x").write_text("deep\n")
    (work / "new/a/link").symlink_to("f1")
    before = _tree(work)
    second = run_umlroot(["run", "--verbose", "--state", str(state), "--", "sh", "-c",
                          "find new | sort && cat new/a/b/hostdir/sub/x new/a/link"], cwd=work)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().splitlines() == sorted(
        ["new", *(f"new/{p}" for p in _tree(work / "new"))]) + ["deep", "1"]
    assert b"wrote back: nothing" in second.stderr
    assert _tree(work) == before
    third = run_umlroot(["run", "--state", str(state), "--", "sh", "-c",
                         "rm -r new/a/b/hostdir/sub && rm new/a/link"], cwd=work)
    assert third.returncode == 0, third.stderr.decode()
    assert sorted(p.name for p in (work / "new/a/b/hostdir").iterdir()) == []
    assert not (work / "new/a/link").is_symlink()
    assert (work / "new/host-top").read_text() == "top\n"


@uml
def test_host_addition_the_state_cannot_take_is_kept(tmp_path: Path) -> None:
    """A host addition the init cannot copy into the state (unreadable) is
    not taken for a deletion: kept on the host, named, exit 125."""
    state = tmp_path / "state.img"
    work = tmp_path / "work"
    work.mkdir()
    first = run_umlroot(["run", "--state", str(state), "--", "sh", "-c", NESTED_SETUP], cwd=work)
    assert first.returncode == 0, first.stderr.decode()
    locked = work / "new/a/locked"
    locked.write_text("secret\n")
    locked.chmod(0)
    try:
        second = run_umlroot(["run", "--state", str(state), "--", "true"], cwd=work)
        assert second.returncode == 125
        assert (f"{locked}: not deleted: the state could not copy the host's additions in "
                "at boot: Permission denied") in second.stderr.decode()
        assert locked.exists()
    finally:
        locked.chmod(0o644)
    assert _tree(work / "new") == {"a": "dir", "a/b": "dir", "a/b/f3": "3\n", "a/f1": "1\n",
                                   "a/locked": "secret\n", "f2": "2\n"}
