"""`--disk PATH[:SIZE][:ro][:name=NAME]`: host files attached as guest block devices.

Grammar (one `--disk` each, up to 15; the scratch disk is ubd0 and UML has 16):

    PATH[:SIZE][:ro][:name=NAME]

- The options after PATH may come in any order, each at most once. They are
  read from the right: the trailing `:`-separated fields that look like
  options are options, the rest is PATH (so `a:b.img:ro` is the file
  `a:b.img`). An empty last field ends the options: `odd:ro:` is the file
  `odd:ro`, attached read-write.
- SIZE: a number of bytes with an optional binary suffix K, M, G or T
  (`512M`, `2G`), a multiple of 512. A missing file is created sparse; a
  smaller file is grown (sparse); a larger one is never shrunk.
- `ro`: attached read-only (the guest gets EROFS); excludes SIZE.
- NAME: the device is /dev/disk/by-umlroot/NAME inside (partitions
  NAME-part1..15). Letters, digits, `.`, `_`, `+`, `-`, at most 64, not
  starting with `.` or `-`. Default: the file's base name with every other
  character replaced by `_`.
- Environment: `UMLROOT_DISK_<NAME>` holds the device path (/dev/ubdb, ...),
  with NAME upper-cased and every character other than a letter, digit or
  `_` replaced by `_` (`name=efi-part` -> `UMLROOT_DISK_EFI_PART`). Two names
  that map to one variable are an error.

While the guest runs, UML holds a POSIX record lock on each disk (a write
lock, or a read lock for `ro`): a second umlroot run on the same file fails
here with a clear message instead of booting without the disk. Processes
that write the file without taking such a lock are not detected; writing
the file from the host during a run corrupts the image, as with any loop
device.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umlroot import log
from umlroot.errors import UmlrootError
from umlroot.machine import UbdDisk
from umlroot.request import DiskLink

MAX_DISKS = 15  # UML's UBD driver has 16 devices; ubd0 is the scratch disk
SECTOR = 512
NAME_MAX_LEN = 64

_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")
_NAME_CHAR_RE = re.compile(r"[^A-Za-z0-9._+-]")
_ENV_CHAR_RE = re.compile(r"[^A-Z0-9_]")
# What may stand on the UML command line as a UBD file name: the command line
# is split on spaces, and UBD splits the file name on ',' and ':' (COW file,
# serial).
_SAFE_UBD_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+")


@dataclass(frozen=True)
class DiskSpec:
    """One parsed `--disk` argument."""

    text: str            # as the user wrote it, for messages
    path: Path
    size: int | None = None
    read_only: bool = False
    name: str = ""


@dataclass(frozen=True)
class DiskSetup:
    """What the run needs to attach the disks: UBD devices after the scratch
    disk (ubdb, ubdc, ...), the by-umlroot links the init makes, and the
    UMLROOT_DISK_<NAME> environment variables CMD sees."""

    ubd: Sequence[UbdDisk] = ()
    links: Sequence[DiskLink] = ()
    env: dict[bytes, bytes] = field(default_factory=dict)


def _error(spec_text: str, message: str, hint: str | None = None) -> UmlrootError:
    return UmlrootError(f"--disk {spec_text}: {message}", hint=hint)


def parse_size(text: str) -> int | None:
    """`512M` -> 536870912; None if TEXT is not a size at all."""
    match = _SIZE_RE.match(text)
    if not match:
        return None
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()]


def default_name(path: Path) -> str:
    name = _NAME_CHAR_RE.sub("_", path.name)[:NAME_MAX_LEN]
    if name[:1] in ("", ".", "-"):
        name = "_" + name[1:] if name else "disk"
    return name


def env_name(name: str) -> str:
    return "UMLROOT_DISK_" + _ENV_CHAR_RE.sub("_", name.upper())


def _check_name(text: str, name: str) -> None:
    if not name or len(name) > NAME_MAX_LEN or not _NAME_RE.match(name):
        raise _error(text, f"bad name {name!r}",
                     hint=f"use up to {NAME_MAX_LEN} letters, digits, '.', '_', '+', '-', "
                          "not starting with '.' or '-'")


def parse_disk_spec(text: str) -> DiskSpec:
    """Split one `--disk` argument; no file system access."""
    fields = text.split(":")
    size: int | None = None
    read_only = False
    name: str | None = None
    while len(fields) > 1:
        option = fields[-1]
        if option == "":
            fields.pop()  # explicit end of options
            break
        if option == "ro" and not read_only:
            read_only = True
        elif option.startswith("name=") and name is None:
            name = option[len("name="):]
            _check_name(text, name)
        elif size is None and (parsed := parse_size(option)) is not None:
            size = parsed
        else:
            break
        fields.pop()
    path_text = ":".join(fields)
    if not path_text:
        raise _error(text, "no file name", hint="--disk PATH[:SIZE][:ro][:name=NAME]")
    if size is not None:
        if size == 0 or size % SECTOR:
            raise _error(text, f"size {size} is not a positive multiple of {SECTOR} bytes")
        if read_only:
            raise _error(text, "a SIZE cannot be combined with ro (it would grow the file)")
    path = Path(path_text)
    return DiskSpec(text=text, path=path, size=size, read_only=read_only,
                    name=name if name is not None else default_name(path))


def _open_flags(spec: DiskSpec) -> int:
    return os.O_RDONLY if spec.read_only else os.O_RDWR


def _check_lock(spec: DiskSpec, fd: int) -> None:
    """UML locks each disk file (write lock, read lock for ro) and, if that
    fails, silently boots without the device. Try the same lock here."""
    kind = fcntl.LOCK_SH if spec.read_only else fcntl.LOCK_EX
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            raise _error(spec.text, "the file is in use (locked) by another umlroot run or UML",
                         hint="wait for it to finish, or attach a copy") from None
        raise
    # The lock goes away when the caller closes fd.


def _check_existing(spec: DiskSpec, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise _error(spec.text, "is a directory", hint="--disk takes an image file")
    if stat.S_ISBLK(info.st_mode):
        if spec.size is not None:
            raise _error(spec.text, "a block device cannot be given a SIZE")
        return
    if not stat.S_ISREG(info.st_mode):
        raise _error(spec.text, "is neither a regular file nor a block device")
    if spec.size is None and info.st_size == 0:
        raise _error(spec.text, "the file is empty", hint=f"give a size: --disk {spec.path}:1G")
    try:
        fd = os.open(spec.path, _open_flags(spec) | os.O_CLOEXEC)
    except OSError as error:
        hint = None
        if not spec.read_only and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            hint = f"to only read it, attach it read-only: --disk {spec.path}:ro"
        raise _error(spec.text, f"cannot open {'for reading' if spec.read_only else 'read-write'}: "
                                f"{error.strerror}", hint=hint) from None
    try:
        _check_lock(spec, fd)
    finally:
        os.close(fd)


def _check_missing(spec: DiskSpec) -> None:
    if spec.size is None:
        if ":" in spec.path.name:
            # Most likely a mistyped option, taken as part of the file name.
            hint = ("options are SIZE (like 512M, 2G), ro and name=NAME: "
                    "--disk PATH[:SIZE][:ro][:name=NAME]")
        else:
            hint = f"to create it, give a size: --disk {spec.path}:1G"
        raise _error(spec.text, "no such file", hint=hint)
    parent = spec.path.absolute().parent
    if not parent.is_dir():
        raise _error(spec.text, f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _error(spec.text, f"cannot create the file: no write permission in {parent}")


def _check_file(spec: DiskSpec) -> object:
    """Check one disk's file; return what identifies it (symlinks are
    followed, as UML follows them)."""
    try:
        info = os.stat(spec.path)
    except FileNotFoundError:
        _check_missing(spec)
        return os.path.abspath(spec.path)
    except OSError as error:
        raise _error(spec.text, error.strerror or str(error)) from None
    _check_existing(spec, info)
    return info.st_dev, info.st_ino


def check_disks(specs: Sequence[DiskSpec]) -> None:
    """Everything that can be wrong, before anything is created or grown:
    no file, name or environment variable twice."""
    if len(specs) > MAX_DISKS:
        raise UmlrootError(f"{len(specs)} --disk options; UML supports at most {MAX_DISKS}")
    seen_files: dict[object, DiskSpec] = {}
    seen_names: dict[str, DiskSpec] = {}
    seen_env: dict[str, DiskSpec] = {}
    for spec in specs:
        identity = _check_file(spec)
        if identity in seen_files:
            raise _error(spec.text, f"the same file as --disk {seen_files[identity].text}")
        seen_files[identity] = spec
        if spec.name in seen_names:
            raise _error(spec.text, f"name {spec.name!r} is already used by "
                                    f"--disk {seen_names[spec.name].text}",
                         hint="give one of them another name with :name=NAME")
        seen_names[spec.name] = spec
        variable = env_name(spec.name)
        if variable in seen_env:
            raise _error(spec.text, f"names {seen_env[variable].name!r} and {spec.name!r} "
                                    f"both map to ${variable}",
                         hint="give one of them another name with :name=NAME")
        seen_env[variable] = spec


def warn_if_short_of_space(spec: DiskSpec) -> None:
    """SIZE is sparse (an image takes only what is written), so a disk may
    promise more than its filesystem holds. Say so before the guest starts:
    writes past the free space are lost and fail the run (exit 125)."""
    if spec.size is None or spec.read_only:
        return
    try:
        allocated = os.stat(spec.path).st_blocks * 512
    except OSError:
        allocated = 0
    try:
        free = shutil.disk_usage(spec.path.parent).free
    except OSError:
        return
    if spec.size - allocated > free:
        log.warn(f"--disk {spec.text}: the image may grow to {spec.size / 2**20:.0f} MiB but "
                 f"{spec.path.parent} has {free / 2**20:.0f} MiB free; if the guest writes "
                 f"more, the run fails (exit 125)")


def apply_size(spec: DiskSpec) -> None:
    """Create or grow the file to SIZE, sparse; never shrink."""
    if spec.size is None:
        return
    warn_if_short_of_space(spec)
    fd = os.open(spec.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size < spec.size:
            os.ftruncate(fd, spec.size)
    except OSError as error:
        raise _error(spec.text, f"cannot grow to {spec.size} bytes: {error.strerror}") from None
    finally:
        os.close(fd)


def ubd_path(spec: DiskSpec, index: int, run_dir: Path) -> Path:
    """An absolute path that survives the UML command line: the file itself,
    or a symlink to it in the run directory (removed after the run)."""
    path = spec.path.absolute()
    if set(str(path)) <= _SAFE_UBD_CHARS:
        return path
    link = run_dir / f"disk{index}"
    if not set(str(link)) <= _SAFE_UBD_CHARS:
        raise _error(spec.text, f"run directory {run_dir} has characters UML cannot take")
    link.symlink_to(path)
    return link


def device_name(index: int) -> str:
    """Guest device of the INDEX-th --disk: ubd0 (ubda) is the scratch disk."""
    return "ubd" + chr(ord("b") + index)


def validate_disks(specs: Sequence[str]) -> list[DiskSpec]:
    """Parse and check every spec; creates nothing, so a run can call it
    before the (slower) kernel and init lookups and fail fast."""
    parsed = [parse_disk_spec(text) for text in specs]
    check_disks(parsed)
    return parsed


def prepare_disks(specs: Sequence[str], run_dir: Path) -> DiskSetup:
    return attach_disks(validate_disks(specs), run_dir)


def attach_disks(parsed: Sequence[DiskSpec], run_dir: Path) -> DiskSetup:
    """Create or grow the files and name them for the guest; `parsed` comes
    from validate_disks (a run checks its specs once, before booting)."""
    ubd: list[UbdDisk] = []
    links: list[DiskLink] = []
    env: dict[bytes, bytes] = {}
    for index, spec in enumerate(parsed):
        apply_size(spec)
        device = device_name(index)
        ubd.append(UbdDisk(ubd_path(spec, index, run_dir), read_only=spec.read_only))
        links.append(DiskLink(device=device, name=spec.name))
        env[env_name(spec.name).encode()] = f"/dev/{device}".encode()
    return DiskSetup(ubd=ubd, links=links, env=env)
