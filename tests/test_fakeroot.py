"""`umlroot fakeroot`: fakeroot's command line and semantics, checked against
fakeroot itself and with host tools (dpkg-buildpackage, dpkg-deb, getcap)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pexpect
import pytest
from conftest import UMLROOT, run_umlroot

pytestmark = pytest.mark.uml

DEMO_PKG = Path(__file__).parent / "data" / "demo-pkg"
GAIN_ROOT = shlex.join([*UMLROOT, "fakeroot"])


# ---- dpkg-buildpackage -r'umlroot fakeroot' against fakeroot -------------------------------


def build_demo(top: Path, gain_root: str) -> Path:
    """Build the demo package in top/src with dpkg-buildpackage; returns the .deb."""
    src = top / "src"
    shutil.copytree(DEMO_PKG, src, symlinks=True)
    result = subprocess.run(
        ["dpkg-buildpackage", "-b", "-us", "-uc", f"-r{gain_root}"],
        cwd=src, capture_output=True, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    return top / "umlroot-demo_1.0_all.deb"


def listing(deb: Path) -> list[tuple[str, str, str, str]]:
    """`dpkg-deb -c`: (mode, owner/group, size, name [-> target]) per entry;
    dates left out (both builds clamp them to the changelog's, but the
    clock may tick between the two)."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        perms, owner, size, _date, _time, name = line.split(None, 5)
        rows.append((perms, owner, size, name))
    return rows


def test_dpkg_buildpackage_gives_the_same_package_as_fakeroot(tmp_path: Path) -> None:
    (tmp_path / "uml").mkdir()
    (tmp_path / "fake").mkdir()
    # The .deb goes to `..`, outside the source tree: the writeback scope of
    # `umlroot fakeroot` is everything the user may write, as with fakeroot.
    uml_deb = build_demo(tmp_path / "uml", GAIN_ROOT)
    fake_deb = build_demo(tmp_path / "fake", "fakeroot")
    uml, fake = listing(uml_deb), listing(fake_deb)
    assert uml == fake
    entries = {name: (perms, owner) for perms, owner, _size, name in uml}
    assert entries["./usr/bin/umlroot-demo-suid"] == ("-rwsr-xr-x", "root/root")
    assert entries["./var/lib/umlroot-demo/"] == ("drwxr-xr-x", "nobody/nogroup")
    assert entries["./var/lib/umlroot-demo/state"] == ("-rw-r--r--", "nobody/nogroup")
    assert entries["./usr/bin/umlroot-demo-link -> umlroot-demo"][0].startswith("l")
    assert entries["./usr/bin/umlroot-demo-cap"] == ("-rwxr-xr-x", "root/root")

    # The capability: both builds set it (debian/rules checks with getcap), and
    # neither package carries it. That is right, and not a difference of the
    # tools: dpkg-deb archives no extended attributes (security.capability is
    # one), which is why Debian packages set capabilities in postinst. Checked
    # as real root, where getcap would see a capability that had been kept.
    script = ("for d in uml fake; do dpkg-deb -x $d/umlroot-demo_1.0_all.deb x-$d; "
              "echo $d: $(getcap -r x-$d | wc -l) $(stat -c '%U:%G:%a' "
              "x-$d/usr/bin/umlroot-demo-suid x-$d/var/lib/umlroot-demo); done")
    result = run_umlroot(["run", "--no-writeback", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "uml: 0 root:root:4755 nobody:nogroup:755",
        "fake: 0 root:root:4755 nobody:nogroup:755",
    ]


# ---- scope: everything the user may write -------------------------------------------------


@pytest.mark.parametrize("args", [["fakeroot", "--"], ["run", "--writable", "/", "--"]])
def test_changes_anywhere_come_back(tmp_path: Path, args: list[str]) -> None:
    work = tmp_path / "work"
    (tmp_path / "elsewhere").mkdir()
    work.mkdir()
    script = ("echo deb > ../x.deb && echo far > ../elsewhere/f && mkdir ../newdir && "
              "chown 0:0 ../x.deb && echo here > here")
    result = run_umlroot([*args, "sh", "-c", script], cwd=work)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "x.deb").read_text() == "deb\n"
    assert (tmp_path / "elsewhere" / "f").read_text() == "far\n"
    assert (tmp_path / "newdir").is_dir()
    assert (work / "here").read_text() == "here\n"
    assert b"discarded" not in result.stderr


def test_changes_the_host_denies_are_summarised(tmp_path: Path) -> None:
    """Guest root may write /etc; the user may not: kept inside, one line."""
    result = run_umlroot(["fakeroot", "--", "sh", "-c", "echo x > /etc/umlroot-test"],
                         cwd=tmp_path)
    assert result.returncode == 0
    assert not Path("/etc/umlroot-test").exists()
    assert result.stderr.decode() == (
        "umlroot: kept only inside: 1 change where the host denies you write access "
        "(use --state to keep them, or write an archive/image)\n")


def test_files_in_tmp_come_back(tmp_path: Path) -> None:
    """With scope /, /tmp inside is the host's (not a fresh tmpfs)."""
    target = Path("/tmp") / f"umlroot-fakeroot-test-{os.getpid()}"
    try:
        result = run_umlroot(["fakeroot", "--", "sh", "-c", f"echo t > {target}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr.decode()
        assert target.read_text() == "t\n"
    finally:
        target.unlink(missing_ok=True)


# ---- fakeroot's options -----------------------------------------------------------------


def state_runs(state: Path) -> int:
    result = run_umlroot(["state", "info", str(state)])
    assert result.returncode == 0, result.stderr.decode()
    line = next(ln for ln in result.stdout.decode().splitlines() if ln.startswith("runs:"))
    return int(line.split()[1])


MAKE_STATE = "touch f && chown 12:34 f && mknod null c 1 3"
SHOW_STATE = "stat -c '%n %u:%g %F' f null"
SHOWN = b"f 12:34 regular empty file\nnull 0:0 character special file\n"


def test_save_then_load(tmp_path: Path) -> None:
    state = tmp_path / "st"
    made = run_umlroot(["fakeroot", "-s", str(state), "--", "sh", "-c", MAKE_STATE], cwd=tmp_path)
    assert made.returncode == 0, made.stderr.decode()
    assert state_runs(state) == 1
    # -i alone: loaded, used, not changed.
    loaded = run_umlroot(["fakeroot", "-i", str(state), "--", "sh", "-c",
                          SHOW_STATE + " && touch g && chown 5:5 g"], cwd=tmp_path)
    assert (loaded.returncode, loaded.stdout) == (0, SHOWN)
    assert state_runs(state) == 1
    # -i F -s F: in place, exactly `umlroot run --state F`.
    both = run_umlroot(["fakeroot", "-i", str(state), "-s", str(state), "--",
                        "chown", "7:7", "f"], cwd=tmp_path)
    assert both.returncode == 0
    assert state_runs(state) == 2
    via_run = run_umlroot(["run", "--state", str(state), "--", "stat", "-c", "%u:%g", "f"],
                          cwd=tmp_path)
    assert (via_run.returncode, via_run.stdout) == (0, b"7:7\n")
    # -i A -s B: B is A plus this run; A stays.
    other = tmp_path / "other"
    copied = run_umlroot(["fakeroot", "-i", str(state), "-s", str(other), "--",
                          "mknod", "zero", "c", "1", "5"], cwd=tmp_path)
    assert copied.returncode == 0
    assert (state_runs(state), state_runs(other)) == (3, 4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".umlroot")] == []


def test_state_is_not_saved_when_the_guest_did_not_finish(tmp_path: Path) -> None:
    state = tmp_path / "st"
    crash = "touch f; echo c > /proc/sysrq-trigger; sleep 10"
    result = run_umlroot(["fakeroot", "-s", str(state), "--", "sh", "-c", crash], cwd=tmp_path)
    assert result.returncode == 125
    assert result.stderr.startswith(b"umlroot: the guest crashed")
    assert not state.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_missing_load_file_starts_empty_and_fakeroot_save_files_are_refused(
        tmp_path: Path) -> None:
    missing = run_umlroot(["fakeroot", "-i", str(tmp_path / "nope"), "--", "true"], cwd=tmp_path)
    assert missing.returncode == 0
    assert b"does not exist; starting with an empty state" in missing.stderr
    saved = tmp_path / "fakeroot.save"
    saved.write_text("dev=803,ino=12,mode=100644,uid=0,gid=0,nlink=1,rdev=0\n")
    refused = run_umlroot(["fakeroot", "-i", str(saved), "--", "true"], cwd=tmp_path)
    assert refused.returncode == 125
    assert refused.stderr.startswith(b"umlroot: -i ")
    assert b"save file of fakeroot itself" in refused.stderr


def test_meaningless_options_are_accepted(tmp_path: Path) -> None:
    result = run_umlroot(["fakeroot", "-u", "-l", "libfakeroot.so", "--faked", "faked",
                          "-b", "3", "--unknown-is-real", "id", "-u"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"0\n")


def test_option_parsing_stops_at_the_command(tmp_path: Path) -> None:
    """As fakeroot's `getopt +...`: options after the command are its own."""
    result = run_umlroot(["fakeroot", "sh", "-c", 'echo "$0 $1"', "-s", "-i"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"-s -i\n")


def test_help_version_and_bad_options(tmp_path: Path) -> None:
    helped = run_umlroot(["fakeroot", "-h"], cwd=tmp_path)
    assert helped.returncode == 0
    assert b"-i FILE" in helped.stdout and b"-s FILE" in helped.stdout
    version = run_umlroot(["fakeroot", "-v"], cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith(b"umlroot fakeroot ")
    bad = run_umlroot(["fakeroot", "--nosuch", "true"], cwd=tmp_path)
    assert bad.returncode == 125
    assert bad.stderr.splitlines()[0] == b"umlroot: No such option '--nosuch'."
    # `dpkg-buildpackage -rumlroot` runs `umlroot debian/rules clean`: say what works.
    gain_root = run_umlroot(["debian/rules", "clean"], cwd=tmp_path)
    assert gain_root.returncode == 125
    assert b"No such command 'debian/rules'" in gain_root.stderr
    assert b"-r'umlroot fakeroot'" in gain_root.stderr


def test_no_command_runs_the_users_shell_interactively(tmp_path: Path) -> None:
    env = {**os.environ, "SHELL": "/bin/sh", "PS1": "root-prompt# "}
    child = pexpect.spawn(UMLROOT[0], [*UMLROOT[1:], "fakeroot"], cwd=str(tmp_path),
                          env=env, timeout=60, dimensions=(30, 100))
    child.expect("root-prompt# ")
    child.send("id -u; echo made > made-here\r")
    child.expect(r"\r\n0\r\n")
    child.expect("root-prompt# ")
    child.send("exit 4\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    assert (tmp_path / "made-here").read_text() == "made\n"
