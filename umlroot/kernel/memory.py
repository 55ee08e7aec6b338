"""Where the guest's memory comes from on the host, and what to say when it
cannot be had.

UML backs the guest's physical memory with one shared file it maps. A kernel
with umlroot's memfd patch makes that file with memfd_create(): anonymous
shared memory, on no mounted filesystem, so neither a `noexec` /dev/shm nor
its size (Docker's default: 64 MiB) matters. Without the patch (or if
memfd_create fails), UML searches a directory itself: $TMPDIR, else
/dev/shm, else /tmp. umlroot removes TMPDIR from UML's environment, because
a TMPDIR on disk would page guest memory out to disk; `UMLROOT_MEMDIR`
names the directory explicitly instead. `umlroot run`, the boot probe and
`umlroot doctor` all go through this module, so they agree.
"""

from __future__ import annotations

import enum
import mmap
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from umlroot.kernel.patches import has_memfd

MEMDIR_VARIABLE = "UMLROOT_MEMDIR"
MEMFD_NAME = "memfd"  # what the memfd patch prints where UML names its memory directory
MEMFD_HINT = ("use a kernel with umlroot's memfd patch (`umlroot kernel build` or "
              "`umlroot kernel import`): it does not need /dev/shm")


def memdir_hint(mem: str) -> str:
    return (f"{MEMFD_HINT}; or set {MEMDIR_VARIABLE} to an exec-capable directory with "
            f"{mem} free (tmpfs preferred: on disk, guest memory is paged to disk)")


def uml_environment() -> dict[str, str]:
    """The environment UML runs with (run and probe alike)."""
    env = dict(os.environ)
    for name in ("TMPDIR", "TMP", "TEMP"):
        env.pop(name, None)
    memdir = os.environ.get(MEMDIR_VARIABLE)
    if memdir:
        env["TMPDIR"] = memdir
    return env


def search_dir() -> Path:
    """The directory UML maps its memory file from when it does not use memfd."""
    memdir = os.environ.get(MEMDIR_VARIABLE)
    if memdir:
        return Path(memdir)
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path("/tmp")


class Backing(enum.Enum):
    MEMFD = "memfd"  # the kernel carries the memfd patch
    DIRECTORY = "directory"  # UML's own search (search_dir())
    UNKNOWN = "unknown"  # a kernel without a record: the boot probe tells


def backing(patches: tuple[str, ...] | None) -> Backing:
    memfd = has_memfd(patches)
    if memfd is None:
        return Backing.UNKNOWN
    return Backing.MEMFD if memfd else Backing.DIRECTORY


# What UML prints when its memory file fails (arch/um/os-Linux/mem.c, and
# arch/um/kernel/trap.c when the guest touches a page the file cannot hold).
_MMAP_CHECK_RE = re.compile(r"Checking PROT_EXEC mmap in (\S+?)\.\.\.(.*)$", re.MULTILINE)
_NOEXEC_RE = re.compile(r"^(\S+) must be not mounted noexec", re.MULTILINE)


@dataclass(frozen=True)
class MemoryProblem:
    directory: str | None
    problem: str

    def message(self, mem: str) -> str:
        where = "a file"
        if self.directory:
            where = f"a file in {self.directory}{_size_note(self.directory)}"
        return (f"the guest's memory ({mem}) could not be had: UML maps it from {where}, "
                f"which {self.problem}")


def _size_note(directory: str) -> str:
    try:
        st = os.statvfs(directory)
    except OSError:
        return ""
    return f" ({st.f_blocks * st.f_frsize / 2**20:.0f} MiB)"


def used_directory(console: str) -> str | None:
    """The directory UML's boot says it mapped memory from (None: memfd, or
    no such output, e.g. under `quiet`). The memfd patch reports its check as
    "Checking PROT_EXEC mmap in memfd...OK"."""
    match = _MMAP_CHECK_RE.search(console)
    return match.group(1) if match and match.group(1) != MEMFD_NAME else None


def exec_mmap_works(directory: Path) -> str | None:
    """None if a file there can be mapped PROT_EXEC (noexec mounts refuse), else why not."""
    try:
        with tempfile.TemporaryFile(dir=directory) as handle:
            handle.truncate(mmap.PAGESIZE)
            mapping = mmap.mmap(handle.fileno(), mmap.PAGESIZE, flags=mmap.MAP_SHARED,
                                prot=mmap.PROT_READ | mmap.PROT_EXEC)
            mapping.close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_directory(directory: str) -> MemoryProblem | None:
    """Try what UML does with a memory directory. Used when UML died before
    its kernel said anything: under `quiet` it exits silently when it cannot
    create its file there (O_TMPFILE fails: exit(1), no message)."""
    problem = exec_mmap_works(Path(directory))
    if problem is None:
        return None
    return MemoryProblem(directory, f"refuses it ({problem})")


def diagnose(console: str, directory: str | None = None) -> MemoryProblem | None:
    """The memory failure a UML console log shows, if any. `directory`: where
    the memory file was, if the log does not say (`quiet` hides UML's checks)."""
    noexec = _NOEXEC_RE.search(console)
    check = _MMAP_CHECK_RE.search(console)
    if noexec is not None:
        return MemoryProblem(noexec.group(1), "is mounted noexec")
    logged = used_directory(console)
    if check is not None and not check.group(2).strip().startswith("OK"):
        return MemoryProblem(logged, f"refuses an executable mapping "
                                     f"({check.group(2).strip()})")
    if "Bus error" in console:
        # UML: "Bus error - the host /dev/shm or /tmp mount likely just ran out of space"
        return MemoryProblem(logged or directory,
                             "ran out of space: the host sent SIGBUS when the guest touched "
                             "more memory than the file could hold")
    return None
