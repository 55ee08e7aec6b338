"""The machine's options, declared once: `MachineConfig`.

The CLI builds one from its flags (`from_cli`), the API from keywords that
map 1:1 onto its fields (`Guest(mem="2G")`, `umlroot.run(..., cpus=2)`), and
it travels whole from there to the guest. Every field is checked here, so
`Guest(cpus=50)` fails as `--cpus 50` does. A new machine option is a field
here, a click option in cli/run.py (tests/test_config.py checks they agree)
and a line in docs/api.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umlroot import sizes
from umlroot.errors import UmlrootError
from umlroot.guest.disks import parse_disk_spec

MAX_CPUS = 8
# The CLI flags whose meaning is the field's negation.
NEGATED_FLAGS = {"no_writeback": "writeback", "no_wait": "state_wait"}
# Fields only the API has: the CLI's working directory is the process's own.
API_ONLY = ("cwd",)

PathArg = str | os.PathLike[str]


def _path(value: PathArg | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class MachineConfig:
    """One guest's options (`umlroot run`'s, without the command)."""

    mem: str = "1G"
    # One CPU by default: in UML's seccomp mode the threads of one process
    # take turns in its stub, so a second CPU only helps separate processes
    # (make -j) and costs threaded ones (docs/kernel.md).
    cpus: int = 1
    kernel: Path | None = None
    cwd: Path | None = None  # None: the current directory
    writable: Sequence[Path] = ()
    writeback: bool = True
    state: Path | None = None
    state_wait: bool = True
    disks: Sequence[str] = ()
    # Off by default, so builds stay hermetic (umlroot/guest/net.py).
    net: bool = False
    # Host files show their real owners; by default yours show as root's, as
    # under fakeroot and in a user namespace that maps root to you.
    real_owners: bool = False
    keep_scratch: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        # Accept what the API is given (str, PathLike, lists) and keep one form.
        set_ = object.__setattr__
        set_(self, "kernel", _path(self.kernel))
        set_(self, "cwd", None if self.cwd is None else Path(os.fsdecode(self.cwd)))
        set_(self, "state", _path(self.state))
        set_(self, "writable", tuple(Path(p) for p in self.writable))
        set_(self, "disks", tuple(os.fspath(d) for d in self.disks))
        check(self)

    @classmethod
    def of(cls, config: MachineConfig | None = None, **options: Any) -> MachineConfig:
        """`config` (default: the defaults) with the given fields replaced;
        an unknown keyword is a TypeError, as for any function."""
        base = config if config is not None else cls()
        return dataclasses.replace(base, **options) if options else base

    @classmethod
    def from_cli(cls, params: Mapping[str, Any]) -> MachineConfig:
        """From click's parameters (named as the fields, or NEGATED_FLAGS)."""
        fields: dict[str, Any] = {
            NEGATED_FLAGS.get(name, name): (not value if name in NEGATED_FLAGS else value)
            for name, value in params.items()}
        return cls(**fields)


def check(config: MachineConfig) -> None:
    mem = sizes.parse_size(config.mem)
    if not mem:
        raise UmlrootError(f"mem {config.mem!r}: not a size like {sizes.EXAMPLES}")
    if isinstance(config.cpus, bool) or not 1 <= config.cpus <= MAX_CPUS:
        raise UmlrootError(f"cpus {config.cpus!r}: not in the range 1 to {MAX_CPUS}")
    for disk in config.disks:
        parse_disk_spec(disk)  # the grammar; the files are checked at boot
