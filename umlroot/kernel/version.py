"""Kernel versions and umlroot's policy on which ones can work."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from umlroot.errors import ExitCode, UmlrootError

_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclasses.dataclass(frozen=True, order=True)
class KernelVersion:
    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def series(self) -> str:
        """`7.3`: the part in Debian's package name `linux-source-7.3`."""
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> KernelVersion:
        """The first `X.Y[.Z]` in `text` (`linux-source-7.3.tar.xz`, `7.3.4-1~bpo13+1`)."""
        match = _VERSION_RE.search(text)
        if match is None:
            raise UmlrootError(f"no kernel version in {text!r}", exit_code=ExitCode.FAILED)
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))

    @classmethod
    def from_makefile(cls, makefile: Path) -> KernelVersion:
        """VERSION / PATCHLEVEL / SUBLEVEL from a kernel tree's top-level Makefile."""
        fields: dict[str, int] = {}
        try:
            text = makefile.read_text(errors="replace")
        except OSError as e:
            raise UmlrootError(f"cannot read {makefile}: {e.strerror}",
                               hint="--source must name a kernel tree or tarball",
                               exit_code=ExitCode.FAILED) from e
        for line in text.splitlines()[:20]:
            match = re.fullmatch(r"(VERSION|PATCHLEVEL|SUBLEVEL)\s*=\s*(\d+)\s*", line)
            if match:
                fields[match.group(1)] = int(match.group(2))
        if "VERSION" not in fields or "PATCHLEVEL" not in fields:
            raise UmlrootError(f"{makefile} does not look like a kernel Makefile",
                               hint="--source must name a kernel tree or tarball",
                               exit_code=ExitCode.FAILED)
        return cls(fields["VERSION"], fields["PATCHLEVEL"], fields.get("SUBLEVEL", 0))


# UML saves/restores guest FPU state with a fixed-size XSAVE buffer before 6.13;
# hosts with AVX-512 or AMX need a bigger one, and the first exec dies with
# "ptrace set fp regs failed, errno = 14".
MIN_WORKING = KernelVersion(6, 13)
# seccomp mode (`seccomp=on`, about 3x cheaper guest syscalls) arrived in 6.16.
MIN_SECCOMP = KernelVersion(6, 16)
# SMP (`ncpus=N`, needs seccomp mode) arrived in 6.19.
MIN_SMP = KernelVersion(6, 19)


def check_buildable(version: KernelVersion) -> list[str]:
    """Refuse versions that cannot work; return warnings for ones that lack features."""
    if version < MIN_WORKING:
        raise UmlrootError(
            f"kernel {version} is too old: UML before {MIN_WORKING.series} crashes at the first "
            "exec on CPUs with AVX-512/AMX (ptrace set fp regs failed)",
            hint=f"use a source of {MIN_WORKING.series} or newer, or leave out --source "
                 "to download one",
            exit_code=ExitCode.FAILED)
    warnings = []
    if version < MIN_SECCOMP:
        warnings.append(f"kernel {version} has no seccomp mode (needs {MIN_SECCOMP.series}): "
                        "guest syscalls will be about 3x slower (ptrace mode)")
    if version < MIN_SMP:
        warnings.append(f"kernel {version} has no UML SMP (needs {MIN_SMP.series}): "
                        "`umlroot run --cpus` will be limited to 1")
    return warnings
