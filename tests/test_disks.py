"""`--disk` spec parsing and validation: no kernel is booted here."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_umlroot

from umlroot.guest.disks import (
    DiskSetup,
    attach_disks,
    validate_disks,
    MAX_DISKS,
    DiskSpec,
    default_name,
    env_name,
    parse_disk_spec,
)
from umlroot.errors import ExitCode, UmlrootError
from umlroot.sizes import parse_size
from umlroot.guest.machine import UbdDisk
from umlroot.guest.request import DiskLink



def prepare_disks(specs: list[str], run_dir: Path) -> DiskSetup:
    return attach_disks(validate_disks(specs), run_dir)

@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("4096", 4096), ("1K", 1024), ("512m", 512 << 20), ("2G", 2 << 30),
    ("1T", 1 << 40), ("1.5G", None), ("G", None), ("-1M", None), ("1GB", None), ("", None),
])
def test_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "expected"), [
    ("img", DiskSpec("img", Path("img"), name="img")),
    ("a/b.img:2G", DiskSpec("a/b.img:2G", Path("a/b.img"), size=2 << 30, name="b.img")),
    ("b.img:ro", DiskSpec("b.img:ro", Path("b.img"), read_only=True, name="b.img")),
    ("b.img:ro:name=boot", DiskSpec("b.img:ro:name=boot", Path("b.img"), read_only=True,
                                    name="boot")),
    # Options in any order.
    ("b.img:name=x:64M", DiskSpec("b.img:name=x:64M", Path("b.img"), size=64 << 20, name="x")),
    # ':' inside the path: only trailing option-like fields are options.
    ("a:b.img:ro", DiskSpec("a:b.img:ro", Path("a:b.img"), read_only=True, name="a_b.img")),
    # An empty last field ends the options.
    ("odd:ro:", DiskSpec("odd:ro:", Path("odd:ro"), name="odd_ro")),
    # The same option twice: the second (from the right) belongs to the path.
    ("x:ro:ro", DiskSpec("x:ro:ro", Path("x:ro"), read_only=True, name="x_ro")),
])
def test_parse_disk_spec(text: str, expected: DiskSpec) -> None:
    assert parse_disk_spec(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    (":1G", "no file name"),
    ("x:1000", "not a positive multiple of 512"),
    ("x:0", "not a positive multiple of 512"),
    ("x:1G:ro", "cannot be combined with ro"),
    ("x:name=", "bad name"),
    ("x:name=a/b", "bad name"),
    ("x:name=.hidden", "bad name"),
    ("x:name=-opt", "bad name"),
    ("x:name=a b", "bad name"),
    ("x:name=" + "n" * 65, "bad name"),
])
def test_bad_specs(text: str, message: str) -> None:
    with pytest.raises(UmlrootError, match=message) as error:
        parse_disk_spec(text)
    assert "\n" not in error.value.message
    assert error.value.message.startswith(f"--disk {text}: ")


@pytest.mark.parametrize(("path", "name"), [
    ("dir/root.img", "root.img"), ("my disk,1.img", "my_disk_1.img"),
    (".hidden", "_hidden"), ("-x", "_x"), ("ünï", "_n_"),
])
def test_default_name(path: str, name: str) -> None:
    assert default_name(Path(path)) == name


@pytest.mark.parametrize(("name", "variable"), [
    ("root", "UMLROOT_DISK_ROOT"), ("efi-part", "UMLROOT_DISK_EFI_PART"),
    ("rootfs.img", "UMLROOT_DISK_ROOTFS_IMG"), ("a+b", "UMLROOT_DISK_A_B"),
])
def test_env_name(name: str, variable: str) -> None:
    assert env_name(name) == variable


def test_prepare_maps_devices_links_and_environment(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(b"\0" * 4096)
    (tmp_path / "b.img").write_bytes(b"\0" * 4096)
    setup = prepare_disks([f"{tmp_path}/a.img", f"{tmp_path}/b.img:ro:name=boot"], tmp_path)
    assert setup.ubd == [UbdDisk(tmp_path / "a.img"), UbdDisk(tmp_path / "b.img", True)]
    assert setup.links == [DiskLink("ubdb", "a.img"), DiskLink("ubdc", "boot")]
    assert setup.env == {b"UMLROOT_DISK_A_IMG": b"/dev/ubdb", b"UMLROOT_DISK_BOOT": b"/dev/ubdc"}


def test_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("r.img").write_bytes(b"\0" * 512)
    assert prepare_disks(["r.img"], tmp_path).ubd[0].path == tmp_path / "r.img"


@pytest.mark.parametrize("file_name", ["with space.img", "comma,cow.img", "colon:x.img", "ü.img"])
def test_unsafe_path_goes_through_a_symlink(tmp_path: Path, file_name: str) -> None:
    image = tmp_path / "images" / file_name
    image.parent.mkdir()
    image.write_bytes(b"\0" * 512)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    disk = prepare_disks([f"{image}:"], run_dir).ubd[0]
    assert disk.path.parent == run_dir
    assert disk.path.resolve() == image
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_-.+")
    assert set(str(disk.path)) <= safe


def test_size_creates_sparse_file(tmp_path: Path) -> None:
    image = tmp_path / "new.img"
    prepare_disks([f"{image}:1G"], tmp_path)
    info = image.stat()
    assert info.st_size == 1 << 30
    assert info.st_blocks * 512 < 1 << 20  # sparse


def test_size_grows_but_never_shrinks(tmp_path: Path) -> None:
    small, large = tmp_path / "small.img", tmp_path / "large.img"
    small.write_bytes(b"x" * 1024)
    large.write_bytes(b"y" * (8 << 20))
    prepare_disks([f"{small}:4M", f"{large}:4M"], tmp_path)
    assert small.stat().st_size == 4 << 20
    assert small.read_bytes()[:1024] == b"x" * 1024
    assert large.stat().st_size == 8 << 20


def _message(specs: list[str], run_dir: Path) -> str:
    with pytest.raises(UmlrootError) as error:
        prepare_disks(specs, run_dir)
    assert error.value.exit_code == ExitCode.UMLROOT
    assert "\n" not in error.value.message
    return error.value.message


def test_missing_file_without_size(tmp_path: Path) -> None:
    assert "no such file" in _message([f"{tmp_path}/nope.img"], tmp_path)


def test_missing_directory_for_new_file(tmp_path: Path) -> None:
    assert "does not exist" in _message([f"{tmp_path}/no/dir.img:1M"], tmp_path)


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in _message([f"{tmp_path}"], tmp_path)


def test_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert "neither a regular file" in _message([f"{tmp_path}/fifo"], tmp_path)


def test_empty_file_needs_a_size(tmp_path: Path) -> None:
    (tmp_path / "empty.img").touch()
    assert "empty" in _message([f"{tmp_path}/empty.img"], tmp_path)


def test_duplicate_file_even_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(b"\0" * 512)
    (tmp_path / "link.img").symlink_to("a.img")
    message = _message([f"{tmp_path}/a.img", f"{tmp_path}/link.img:name=other"], tmp_path)
    assert "same file" in message


def test_duplicate_name(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(b"\0" * 512)
    (tmp_path / "b.img").write_bytes(b"\0" * 512)
    message = _message([f"{tmp_path}/a.img:name=x", f"{tmp_path}/b.img:name=x"], tmp_path)
    assert "already used" in message


def test_names_that_map_to_one_variable(tmp_path: Path) -> None:
    (tmp_path / "a-b").write_bytes(b"\0" * 512)
    (tmp_path / "a_b").write_bytes(b"\0" * 512)
    assert "UMLROOT_DISK_A_B" in _message([f"{tmp_path}/a-b", f"{tmp_path}/a_b"], tmp_path)


def test_too_many_disks(tmp_path: Path) -> None:
    specs = [f"{tmp_path}/d{i}.img:1M" for i in range(MAX_DISKS + 1)]
    assert "at most 15" in _message(specs, tmp_path)
    assert not list(tmp_path.glob("d*.img"))  # nothing created before failing


def test_fifteen_disks_are_fine(tmp_path: Path) -> None:
    specs = [f"{tmp_path}/d{i}.img:1M" for i in range(MAX_DISKS)]
    setup = prepare_disks(specs, tmp_path)
    assert [link.device for link in setup.links][-1] == "ubdp"


def test_nothing_is_created_when_a_later_spec_is_bad(tmp_path: Path) -> None:
    _message([f"{tmp_path}/first.img:1M", f"{tmp_path}/missing.img"], tmp_path)
    assert not (tmp_path / "first.img").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write any file")
def test_unwritable_file_suggests_ro(tmp_path: Path) -> None:
    image = tmp_path / "ro.img"
    image.write_bytes(b"\0" * 512)
    image.chmod(0o444)
    message = _message([f"{image}"], tmp_path)
    assert "cannot open read-write" in message
    prepare_disks([f"{image}:ro"], tmp_path)  # read-only is fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    image = tmp_path / "secret.img"
    image.write_bytes(b"\0" * 512)
    image.chmod(0o200)
    assert "cannot open for reading" in _message([f"{image}:ro"], tmp_path)


def test_file_locked_by_another_run(tmp_path: Path) -> None:
    """UML takes a POSIX write lock on each rw disk; another holder means
    another run uses the file. A child process holds it here (a lock held by
    this process would not conflict with itself)."""
    image = tmp_path / "busy.img"
    image.write_bytes(b"\0" * 512)
    hold_lock = ("import fcntl, sys; f = open(sys.argv[1], 'r+b'); fcntl.lockf(f, fcntl.LOCK_EX);"
                 " print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold_lock, str(image)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        assert "in use" in _message([f"{image}"], tmp_path)
        assert "in use" in _message([f"{image}:ro"], tmp_path)
    finally:
        holder.communicate(b"")
    prepare_disks([f"{image}"], tmp_path)
    # Our own check leaves no lock behind.
    with open(image, "r+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_cli_error_is_one_line_and_exit_125(tmp_path: Path) -> None:
    """Through the real command line: one line, exit 125, no traceback
    (whether or not a kernel is found first)."""
    result = run_umlroot(["run", "--disk", f"{tmp_path}/missing.img", "--", "true"], cwd=tmp_path)
    assert result.returncode == ExitCode.UMLROOT
    assert b"Traceback" not in result.stderr
    assert result.stderr.startswith(b"umlroot: ")
