"""The kernel wheel (`pip install umlroot-kernel`), when one is installed.

The wheel (written by `umlroot kernel wheel`, see wheel.py) installs a
package `umlroot_kernel` holding three files: the UML kernel `linux`, the
prebuilt static guest `init` and `manifest.json` (the same manifest as a
`kernel export` archive: build record, guest init source hash, SHA-256s).
umlroot finds it by module spec: the package is never imported, nothing of
it runs, and finding it costs a path lookup on every `umlroot run`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
from pathlib import Path
from umlroot.errors import UmlrootError
from umlroot.kernel.manifest import INIT, KERNEL, MANIFEST, Manifest

PACKAGE = "umlroot_kernel"
DISTRIBUTION = "umlroot-kernel"


@dataclasses.dataclass(frozen=True)
class Packaged:
    directory: Path
    manifest: Manifest

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL

    @property
    def init(self) -> Path:
        return self.directory / INIT


def location() -> Path | None:
    """Where the installed `umlroot_kernel` package is, if one is."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def read(directory: Path) -> Manifest:
    """The wheel's manifest; a one-line UmlrootError if it is missing or damaged."""
    try:
        text = (directory / MANIFEST).read_text()
    except OSError as e:
        raise UmlrootError(f"the {DISTRIBUTION} wheel at {directory} has no readable "
                           f"{MANIFEST} ({e.strerror})",
                           hint=f"reinstall it (`pip install --force-reinstall {DISTRIBUTION}`)"
                           ) from e
    return Manifest.from_json(text)


def find() -> Packaged | None:
    """The installed kernel wheel for this machine; None if there is none or
    it cannot be read (`umlroot doctor` says why)."""
    directory = location()
    if directory is None:
        return None
    try:
        manifest = read(directory)
    except UmlrootError:
        return None
    if manifest.machine != platform.machine():
        return None
    return Packaged(directory, manifest)


def prebuilt_init(init_hash: str) -> Path | None:
    """The wheel's guest init, if it was built from sources with this hash."""
    found = find()
    if found is None or found.manifest.init_hash != init_hash:
        return None
    return found.init if os.access(found.init, os.X_OK) else None
