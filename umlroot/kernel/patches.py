"""umlroot's own kernel patches: `umlroot/kernel/patches/*.patch`, applied in
name order to every kernel tree umlroot unpacks itself.

Each patch says in its header why it exists and what it measured. They
are part of what identifies a build, with the fragment: changing either
makes the next `umlroot kernel build` rebuild.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from umlroot.kernel import fragment


@dataclass(frozen=True)
class Patch:
    name: str
    text: bytes


def shipped_patches() -> list[Patch]:
    folder = resources.files("umlroot.kernel").joinpath("patches")
    return sorted((Patch(entry.name, entry.read_bytes()) for entry in folder.iterdir()
                   if entry.name.endswith(".patch")), key=lambda patch: patch.name)


def build_id(fragment_text: str, patches: list[Patch] | None = None) -> str:
    """What identifies a build besides the kernel version: the fragment's
    options and the patches (names and contents)."""
    digest = hashlib.sha256(fragment.fragment_hash(fragment_text).encode())
    for patch in shipped_patches() if patches is None else patches:
        digest.update(b"\0" + patch.name.encode() + b"\0" + patch.text)
    return digest.hexdigest()[:12]


def carried(record_patches: tuple[str, ...] | None, record_build_id: str,
            fragment_text: str) -> tuple[str, ...] | None:
    """The patches a cached kernel carries: what its record says; for a record
    older than that field, the shipped patches if its build id is this
    umlroot's; else None (unknown: ask the kernel by booting it)."""
    if record_patches is not None:
        return record_patches
    if record_build_id == build_id(fragment_text):
        return tuple(patch.name for patch in shipped_patches())
    return None


def has_memfd(names: tuple[str, ...] | None) -> bool | None:
    """Whether those patches include the one that backs guest memory with
    memfd_create() (its file name says `memfd`); None if unknown."""
    if names is None:
        return None
    return any("memfd" in name for name in names)


def has_owner_mapping(names: tuple[str, ...] | None) -> bool | None:
    """Whether those patches include hostfs's map_root_uid/map_root_gid (its
    file name says `map-the-invoking-users-files`); None if unknown."""
    if names is None:
        return None
    return any("map-the-invoking-users-files" in name for name in names)


def patch_command(patch_file: Path) -> list[str]:
    """`patch` invocation for one patch file, run in the top of the tree."""
    return ["patch", "-p1", "--forward", "--batch", "-i", str(patch_file)]
