"""`umlroot mkfs` options: the closed sets of choices, and which combinations make sense.

Everything here is checked before anything is written or booted, and every
refusal is one line (exit 125).
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path

from umlroot.errors import UmlrootError

MIB = 1 << 20


class FsType(str, enum.Enum):
    EXT4 = "ext4"
    BTRFS = "btrfs"
    XFS = "xfs"
    VFAT = "vfat"
    SQUASHFS = "squashfs"
    EROFS = "erofs"
    ISO9660 = "iso9660"

    def __str__(self) -> str:
        return self.value

    @property
    def writes_file(self) -> bool:
        """The tool writes a finished image (compressed, read-only) instead of
        formatting a device that is then filled through a mount."""
        return self in (FsType.SQUASHFS, FsType.EROFS, FsType.ISO9660)


class SourceKind(enum.Enum):
    DIRECTORY = "directory"
    TARBALL = "tarball"


class Owners(enum.Enum):
    """Whose files go into the image, for a directory source (a tarball's
    members carry their own owners)."""

    # As the guest sees the host: your files 0:0, other owners as they are
    # (the default, as under fakeroot).
    YOURS_AS_ROOT = "yours as root"
    REAL = "real"            # the host's owners as they are (--real-owners)
    ALL_ROOT = "all root"    # every file 0:0
    STATE = "state"          # as a `--state` file shows the directory


class Partitioning(str, enum.Enum):
    NONE = "none"
    GPT = "gpt"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SizeSpec:
    """`--size`: absolute bytes, or bytes on top of the computed size."""

    value: int
    relative: bool


@dataclass(frozen=True)
class MkfsOptions:
    fstype: FsType
    source: Path
    output: Path
    size: SizeSpec | None = None
    label: str | None = None
    all_root: bool = False
    real_owners: bool = False
    state: Path | None = None
    partition: Partitioning = Partitioning.NONE
    luks_key: Path | None = None
    verity: bool = False
    verbose: bool = False

    @property
    def owners(self) -> Owners:
        if self.all_root:
            return Owners.ALL_ROOT
        if self.state is not None:
            return Owners.STATE
        if self.real_owners:
            return Owners.REAL
        return Owners.YOURS_AS_ROOT


# What each tool accepts as a label (longer ones are refused by the tool
# after the guest has booted, or silently cut).
LABEL_MAX = {FsType.EXT4: 16, FsType.BTRFS: 255, FsType.XFS: 12, FsType.VFAT: 11,
             FsType.ISO9660: 32}
_SIZE_RE = re.compile(r"^(\+?)([0-9]+)([KMGT]?)$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> SizeSpec:
    """`512M` (absolute) or `+100M` (on top of what the content needs)."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise UmlrootError(f"--size {text}: not a size like 512M, 2G or +100M")
    value = int(match.group(2)) * _FACTORS[match.group(3).upper()]
    if value == 0 and not match.group(1):
        raise UmlrootError(f"--size {text}: an image needs a size above 0")
    return SizeSpec(value=value, relative=bool(match.group(1)))


def source_kind(source: Path) -> SourceKind:
    if source.is_dir():
        return SourceKind.DIRECTORY
    if source.is_file():
        return SourceKind.TARBALL
    if not source.exists():
        raise UmlrootError(f"SOURCE {source}: no such file or directory")
    raise UmlrootError(f"SOURCE {source}: neither a directory nor a tarball")


def _refuse(message: str, hint: str | None = None) -> UmlrootError:
    return UmlrootError(message, hint=hint)


def check_combination(options: MkfsOptions, kind: SourceKind) -> None:
    """Refuse what cannot be built, with the reason, before any work."""
    fstype = options.fstype
    if sum((options.all_root, options.state is not None, options.real_owners)) > 1:
        raise _refuse("--all-root, --real-owners and --state exclude each other "
                      "(owners come from one place)")
    if kind is SourceKind.TARBALL and options.state is not None:
        raise _refuse("--state gives the owners of a directory; a tarball carries its own",
                      hint="drop --state, or give the directory")
    if options.luks_key is not None and fstype.writes_file:
        raise _refuse(f"--luks needs a filesystem made on a device (ext4, btrfs, xfs, vfat), "
                      f"not {fstype}")
    if options.verity and fstype not in (FsType.SQUASHFS, FsType.EROFS):
        raise _refuse(f"--verity needs a read-only filesystem (squashfs, erofs), not {fstype}",
                      hint="a writable filesystem changes when mounted, and its hash tree "
                           "would no longer match")
    if options.verity and options.partition is not Partitioning.NONE:
        raise _refuse("--verity writes the hash tree to a file beside OUTPUT; it cannot be "
                      "combined with --partition")
    if fstype is FsType.ISO9660 and options.partition is not Partitioning.NONE:
        raise _refuse("an iso9660 image is a whole disk of its own; --partition does not apply")
    if options.size is not None and fstype.writes_file:
        raise _refuse(f"--size does not apply to {fstype}: the image is as large as its "
                      "compressed content")
    if options.label is not None:
        _check_label(fstype, options.label)
    if options.output.exists() and options.output.is_dir():
        raise _refuse(f"OUTPUT {options.output}: is a directory")
    _check_apart(options.source, options.output)


def _check_apart(source: Path, output: Path) -> None:
    """OUTPUT (and the staging directory beside it) inside a SOURCE
    directory would be copied into itself; OUTPUT as SOURCE overwritten."""
    src = os.path.realpath(source)
    out_dir = os.path.realpath(output.parent)
    if os.path.realpath(output) == src:
        raise _refuse(f"OUTPUT {output} is SOURCE itself")
    if out_dir == src or out_dir.startswith(src.rstrip("/") + "/"):
        raise _refuse(f"OUTPUT {output} is inside SOURCE {source}: the image would hold "
                      "itself", hint="write OUTPUT beside SOURCE, or elsewhere")


def _check_label(fstype: FsType, label: str) -> None:
    limit = LABEL_MAX.get(fstype)
    if fstype is FsType.EROFS:
        # The erofs superblock has a volume name, but only erofs-utils 1.6+
        # can set it (mkfs.erofs -L); Debian 12 has 1.5.
        raise _refuse("--label: umlroot does not set erofs labels (mkfs.erofs -L needs "
                      "erofs-utils 1.6 or newer)")
    if limit is None:
        raise _refuse(f"--label: {fstype} images have no label")
    if not label or len(label.encode()) > limit:
        raise _refuse(f"--label {label!r}: {fstype} takes 1 to {limit} bytes")
    if "\n" in label or "\0" in label:
        raise _refuse(f"--label {label!r}: no newlines or NUL bytes")
