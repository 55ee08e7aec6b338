"""umlroot's Kconfig fragment: parse it, hash it, and check a .config against it."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from importlib import resources
from pathlib import Path

from umlroot.errors import ExitCode, UmlrootError

_SET_RE = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
_UNSET_RE = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")


@dataclasses.dataclass(frozen=True)
class Option:
    """One fragment line: `CONFIG_X=value`, or value None for `# CONFIG_X is not set`."""

    name: str
    value: str | None
    line: int = 0

    def __str__(self) -> str:
        return f"{self.name}={self.value}" if self.value is not None else f"{self.name} unset"


def fragment_text() -> str:
    """The fragment shipped in the package."""
    return resources.files("umlroot.kernel").joinpath("kernel.config").read_text()


def fragment_hash(text: str) -> str:
    """Hash of what the fragment asks for, so editing a comment does not force a rebuild."""
    canonical = "\n".join(f"{o.name}={o.value}" for o in parse_fragment(text))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def parse_fragment(text: str, *, origin: str = "kernel.config") -> list[Option]:
    """Every option line; anything else that is not a comment is an error, not ignored."""
    options: list[Option] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        set_match = _SET_RE.fullmatch(line)
        unset_match = _UNSET_RE.fullmatch(line)
        if set_match:
            option = Option(set_match.group(1), set_match.group(2), number)
        elif unset_match:
            option = Option(unset_match.group(1), None, number)
        elif line.startswith("#"):
            continue
        else:
            raise UmlrootError(f"{origin}:{number}: not a Kconfig line: {line!r}",
                               exit_code=ExitCode.FAILED)
        if option.name in seen:
            raise UmlrootError(f"{origin}:{number}: {option.name} already set on line "
                               f"{seen[option.name]}", exit_code=ExitCode.FAILED)
        seen[option.name] = number
        options.append(option)
    return options


def parse_config(text: str) -> dict[str, str]:
    """A .config as {name: value}; options that are not set are simply absent."""
    values = {}
    for line in text.splitlines():
        match = _SET_RE.fullmatch(line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


def unmet(options: list[Option], config: dict[str, str]) -> list[str]:
    """What the fragment asks for that the final .config does not have, one line each.

    `# CONFIG_X is not set` is met when X is absent too: Kconfig does not write
    options whose dependencies are off (RAID6_PQ_BENCHMARK without BTRFS).
    """
    problems = []
    for option in options:
        actual = config.get(option.name)
        if option.value is None:
            if actual is not None and actual != "n":
                problems.append(f"{option.name}: fragment says not set, .config has {actual}")
        elif actual != option.value:
            found = "nothing (dropped by Kconfig)" if actual is None else actual
            problems.append(f"{option.name}: fragment says {option.value}, .config has {found}")
    return problems


def verify_config(options: list[Option], config_path: Path) -> None:
    problems = unmet(options, parse_config(config_path.read_text(errors="replace")))
    if problems:
        raise UmlrootError(
            f"the kernel configuration lacks {len(problems)} option(s) umlroot needs: "
            + "; ".join(problems),
            hint="Kconfig drops options whose dependencies are missing: this kernel version "
                 "needs a fragment change (umlroot/kernel/kernel.config)",
            exit_code=ExitCode.FAILED)


def smp_enabled(config: dict[str, str]) -> bool:
    return config.get("CONFIG_SMP") == "y"
