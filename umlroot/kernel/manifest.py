"""The manifest of a kernel archive (`kernel export`) and of the kernel wheel:
build record, guest init source hash, SHA-256s. A leaf module: both the
archive code and the wheel lookup (which the guest init builder uses) read it.
"""

from __future__ import annotations

import dataclasses
import json

from umlroot.errors import ExitCode, UmlrootError
from umlroot.kernel import store

# The files of a kernel export archive and of the installed kernel wheel.
MANIFEST = "manifest.json"
KERNEL = "linux"
INIT = "init"


@dataclasses.dataclass(frozen=True)
class Manifest:
    format: int
    umlroot: str
    machine: str
    record: store.Record
    init_hash: str
    sha256: dict[str, str]

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["record"] = json.loads(self.record.to_json())
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            return cls(format=int(data["format"]), umlroot=str(data["umlroot"]),
                       machine=str(data["machine"]),
                       record=store.Record.from_json(json.dumps(data["record"])),
                       init_hash=str(data["init_hash"]),
                       sha256={str(k): str(v) for k, v in dict(data["sha256"]).items()})
        except (ValueError, KeyError, TypeError) as e:
            raise UmlrootError(
                f"the archive's manifest is not readable ({type(e).__name__}: {e})",
                hint="export it again with `umlroot kernel export`",
                exit_code=ExitCode.FAILED) from e
