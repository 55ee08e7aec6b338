"""Installed kernels in the cache: `kernels/<version>-<fragment hash>/{linux,record.json}`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from umlroot.cache import cache_dir

RECORD = "record.json"
BINARY = "linux"


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def lock_path() -> Path:
    """One lock for building/installing kernels (the second build waits)."""
    return cache_dir() / "kernels.lock"


def entry_name(version: str, fragment_hash: str) -> str:
    """The cache key: the same source version built with the same fragment is the same kernel."""
    return f"{version}-{fragment_hash}"


@dataclasses.dataclass(frozen=True)
class Record:
    """What was built from what, and how long it took (record.json)."""

    version: str
    fragment_hash: str
    source: str  # human description: "debian linux-source-7.3 7.3.4-1~bpo13+1 (trixie-backports)"
    source_id: str  # identity used to detect "nothing changed"
    smp: bool
    build_seconds: float
    built_at: str  # ISO 8601, UTC
    compile_steps: int = 0  # CC lines, to estimate the next build's progress
    # Names of umlroot's patches applied to the source (umlroot/kernel/patches/),
    # in order; None in records written before this field existed.
    patches: tuple[str, ...] | None = None
    imported_at: str = ""  # ISO 8601, UTC, when `umlroot kernel import` installed it

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        if isinstance(fields.get("patches"), list):
            fields["patches"] = tuple(str(name) for name in fields["patches"])
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class Entry:
    directory: Path
    record: Record

    @property
    def binary(self) -> Path:
        return self.directory / BINARY


def installed() -> list[Entry]:
    """Complete entries (binary + readable record), in no particular order."""
    entries = []
    try:
        candidates = list(kernels_dir().iterdir())
    except OSError:
        return []
    for directory in candidates:
        if directory.name.startswith("."):
            continue  # a build in progress or a leftover of a killed one
        try:
            record = Record.from_json((directory / RECORD).read_text())
        except (OSError, ValueError, TypeError):
            continue
        if (directory / BINARY).is_file():
            entries.append(Entry(directory, record))
    return entries


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def best(entries: list[Entry], fragment_hash: str) -> Entry | None:
    """Prefer kernels built with the current fragment, then the newest version."""
    if not entries:
        return None
    return max(entries, key=lambda e: (e.record.fragment_hash == fragment_hash,
                                       version_key(e.record.version), e.record.built_at))
