"""Which kernel `umlroot run` uses, and why.

Order: `--kernel PATH`, `$UMLROOT_KERNEL`; then the per-user cache and the
kernel wheel (`umlroot-kernel`, packaged.py): a kernel built with this
umlroot's build id (kernel.config + patches) before one that is not, and
between two equally current ones the cache's, which this user built or
imported on purpose; then a distro `linux.uml` that passes the boot probe on
this machine. The cache and wheel paths do no boot (they run on every
`umlroot run`); a system kernel is probed once per kernel file and host CPU,
and the verdict is cached.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
from pathlib import Path

from umlroot.errors import ExitCode, UmlrootError
from umlroot.kernel import packaged, probe, store
from umlroot.kernel.fragment import fragment_text
from umlroot.kernel.patches import build_id, carried

SYSTEM_KERNELS = (Path("/usr/bin/linux.uml"), Path("/usr/bin/linux"))
BUILD_HINT = "run `umlroot kernel build` (about 10 minutes, once)"


class Origin(enum.Enum):
    OPTION = "--kernel"
    ENV = "UMLROOT_KERNEL"
    CACHE = "cache"
    WHEEL = "wheel"
    SYSTEM = "system"


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    path: Path
    version: str | None
    origin: Origin
    reason: str  # one human sentence
    smp: bool = False
    # Extra kernel arguments that speed up boot on this host (`lpj=N`: skip the
    # delay-loop calibration); empty when no probe result is recorded.
    boot_args: tuple[str, ...] = ()
    # umlroot's patches the kernel carries (from its build record); None when
    # unknown (a distro kernel, a binary named by path outside the cache).
    patches: tuple[str, ...] | None = None


def _ask_binary(path: Path, flag: str) -> str | None:
    """`linux --version` / `linux --showconfig`: UML answers without booting (~1 ms)."""
    try:
        done = subprocess.run([str(path), flag], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def describe_binary(path: Path) -> tuple[str | None, bool]:
    """(version, has CONFIG_SMP) of a kernel that is not in the cache."""
    version = _ask_binary(path, "--version")
    config = _ask_binary(path, "--showconfig") or ""
    version = version.strip().splitlines()[0] if version and version.strip() else None
    return version, "CONFIG_SMP=y" in config.splitlines()


def _boot_args(path: Path) -> tuple[str, ...]:
    lpj = probe.preset_lpj(path)
    return (f"lpj={lpj}",) if lpj else ()


def _named(path: Path, origin: Origin, how: str) -> KernelChoice:
    if not path.is_file() or not os.access(path, os.X_OK):
        problem = "no such file" if not path.exists() else "not an executable file"
        raise UmlrootError(f"{how} {path}: {problem}",
                           hint="name a UML kernel binary (`umlroot kernel path` shows the "
                                "cached one)", exit_code=ExitCode.UMLROOT)
    for entry in store.installed():
        if entry.binary.resolve() == path.resolve():
            return KernelChoice(path, entry.record.version, origin,
                                f"named by {how} (cached build from {entry.record.source})",
                                entry.record.smp, _boot_args(path), _carried(entry.record))
    version, smp = describe_binary(path)
    return KernelChoice(path, version, origin, f"named by {how}", smp, _boot_args(path))


def _carried(record: store.Record) -> tuple[str, ...] | None:
    return carried(record.patches, record.fragment_hash, fragment_text())


def _cache_choice(entry: store.Entry, current: str) -> KernelChoice:
    note = "" if entry.record.fragment_hash == current else \
        " (built with an older kernel.config; `umlroot kernel build` updates it)"
    return KernelChoice(entry.binary, entry.record.version, Origin.CACHE,
                        f"built by `umlroot kernel build` from {entry.record.source}{note}",
                        entry.record.smp, _boot_args(entry.binary), _carried(entry.record))


def _wheel_choice(found: packaged.Packaged, current: str) -> KernelChoice:
    record = found.manifest.record
    if not os.access(found.kernel, os.X_OK):
        raise UmlrootError(f"the {packaged.DISTRIBUTION} wheel's kernel {found.kernel} is not "
                           "executable (installed by a tool that drops file modes?)",
                           hint=f"reinstall it with pip (`pip install --force-reinstall "
                                f"{packaged.DISTRIBUTION}`)", exit_code=ExitCode.UMLROOT)
    note = "" if record.fragment_hash == current else \
        (f" (built with another kernel.config or patches, build {record.fragment_hash}: "
         f"install the {packaged.DISTRIBUTION} made for this umlroot)")
    return KernelChoice(found.kernel, record.version, Origin.WHEEL,
                        f"from the {packaged.DISTRIBUTION} wheel in {found.directory}, "
                        f"built from {record.source}{note}",
                        record.smp, _boot_args(found.kernel), _carried(record))


def from_installed() -> KernelChoice | None:
    """The cache's kernel or the wheel's: a current build first, the cache's on a tie."""
    current = build_id(fragment_text())
    entry = store.best(store.installed(), current)
    found = packaged.find()
    cache_current = entry is not None and entry.record.fragment_hash == current
    wheel_current = found is not None and found.manifest.record.fragment_hash == current
    if entry is not None and (cache_current or not wheel_current):
        return _cache_choice(entry, current)
    if found is not None:
        return _wheel_choice(found, current)
    return None


def system_candidates() -> list[Path]:
    seen: list[Path] = []
    for path in SYSTEM_KERNELS:
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() not in \
                [p.resolve() for p in seen]:
            seen.append(path)
    return seen


def from_system() -> tuple[KernelChoice | None, list[str]]:
    """The first distro kernel that boots here; else the reasons the others do not."""
    refusals: list[str] = []
    for path in system_candidates():
        result = probe.probe(path)
        if result.ok:
            version, smp = describe_binary(path)
            return KernelChoice(path, version, Origin.SYSTEM,
                                f"distro kernel, passed the boot probe ({result.explain()})",
                                smp, _boot_args(path)), refusals
        refusals.append(f"{path} {result.explain()}")
    return None, refusals


def find_kernel(explicit: Path | None = None) -> KernelChoice:
    if explicit is not None:
        return _named(explicit, Origin.OPTION, "--kernel")
    env = os.environ.get("UMLROOT_KERNEL")
    if env:
        return _named(Path(env), Origin.ENV, "UMLROOT_KERNEL")
    installed = from_installed()
    if installed is not None:
        return installed
    system, refusals = from_system()
    if system is not None:
        return system
    if any("AVX-512/AMX" in r for r in refusals):
        raise UmlrootError(
            "no UML kernel found: " + "; ".join(refusals),
            hint="run `umlroot kernel build` (about 10 minutes, once): it builds a kernel "
                 ">= 6.13, which fixes this", exit_code=ExitCode.UMLROOT)
    details = "\n".join(f"umlroot: {r}" for r in refusals) or None
    raise UmlrootError("no UML kernel found", hint=BUILD_HINT, exit_code=ExitCode.UMLROOT,
                       details=details)
