"""`--disk PATH[:SIZE][:ro][:name=NAME]`: host files attached as guest block devices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from umlroot.errors import UmlrootError
from umlroot.machine import UbdDisk
from umlroot.request import DiskLink


@dataclass(frozen=True)
class DiskSetup:
    """What the run needs to attach the disks: UBD devices after the scratch
    disk (ubdb, ubdc, ...), the by-umlroot links the init makes, and the
    UMLROOT_DISK_<NAME> environment variables CMD sees."""

    ubd: Sequence[UbdDisk] = ()
    links: Sequence[DiskLink] = ()
    env: dict[bytes, bytes] = field(default_factory=dict)


def prepare_disks(specs: Sequence[str], run_dir: Path) -> DiskSetup:
    if specs:
        raise UmlrootError("--disk is not implemented yet")
    return DiskSetup()
