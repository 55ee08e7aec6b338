"""`umlroot doctor`: one line per check, OK / WARN / FAIL with a fix hint.

FAIL means `umlroot run` will not work; WARN means it works, slower or with
less (ptrace mode, no --cpus); INFO is for reading only. Exit 0 only without
FAIL.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from umlroot import guestinit, guestmem, net, rundir
from umlroot.errors import UmlrootError
from umlroot.kernel import packaged, probe, wheel
from umlroot.kernel.build import REQUIRED_TOOLS, missing_tools
from umlroot.kernel.fragment import fragment_text
from umlroot.kernel.patches import build_id
from umlroot.kernel.select import KernelChoice, find_kernel

# `umlroot run --mem`'s default: what a memory directory should hold.
DEFAULT_MEM = "1G"
GUEST_MEMORY_BYTES = 1 << 30
MIN_NOFILE_HARD = 4096
# Less room than this where scratch disks go is worth a warning: a package
# build or an image writes that much.
SCRATCH_LOW = 2 * 2**30


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    INFO = "INFO"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name}: {self.detail}"
        if self.hint and self.status in (Status.FAIL, Status.WARN):
            text += f"\n      fix: {self.hint}"
        return text


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 10):  # noqa: UP036 - doctor may run under any python3
        return Check("python", Status.OK, version)
    return Check("python", Status.FAIL, f"{version} is older than 3.10",
                 "use Python 3.10 or newer")


def find_kernel_check() -> tuple[Check, KernelChoice | None]:
    try:
        choice = find_kernel()
    except UmlrootError as error:
        return Check("kernel", Status.FAIL, error.message, error.hint), None
    return Check("kernel", Status.OK,
                 f"{choice.path} ({choice.version or 'unknown version'}; {choice.reason})"), choice


@dataclasses.dataclass(frozen=True)
class BootReport:
    checks: list[Check]
    result: probe.ProbeResult  # the boot that worked, else the last one tried


def boot_checks(choice: KernelChoice) -> BootReport:
    """Boot the kernel in seccomp mode; if that cannot start, in ptrace mode.

    With a recorded lpj= the boot is timed as `umlroot run` boots (no delay
    calibration); the first doctor run calibrates and records it.
    """
    lpj = probe.preset_lpj(choice.path)
    seccomp = probe.probe(choice.path, probe.ProbeSettings(seccomp=True, lpj=lpj),
                          use_cache=False)
    if seccomp.ok:
        return BootReport([Check("kernel boots", Status.OK, seccomp.explain()),
                           Check("seccomp mode", Status.OK,
                                 "usable (about 3x cheaper guest syscalls)")], seccomp)
    ptrace = probe.probe(choice.path, probe.ProbeSettings(lpj=lpj), use_cache=False)
    if not ptrace.ok:
        if ptrace.status is probe.ProbeStatus.FP_REGS:
            hint = "run `umlroot kernel build`"
        elif ptrace.status is probe.ProbeStatus.NO_TMPEXEC:
            hint = guestmem.MEMFD_HINT
        else:
            hint = "run `umlroot --debug kernel info --probe` to see the kernel's output"
        return BootReport([Check("kernel boots", Status.FAIL,
                                 f"{choice.path} {ptrace.explain()}", hint)], ptrace)
    return BootReport([Check("kernel boots", Status.OK, f"{ptrace.explain()} (ptrace mode)"),
                       Check("seccomp mode", Status.WARN, seccomp.explain(),
                             "a kernel >= 6.16 (`umlroot kernel build`) on a host that allows "
                             "seccomp filters; umlroot falls back to ptrace mode")], ptrace)


def check_kernel_wheel() -> Check:
    """The umlroot-kernel wheel: INFO when absent, FAIL when damaged, WARN when
    made for another umlroot (its kernel or init then is not what run wants)."""
    name = f"kernel wheel ({packaged.DISTRIBUTION})"
    directory = packaged.location()
    if directory is None:
        return Check(name, Status.INFO, "not installed (optional: `umlroot kernel wheel DIR` "
                                        "makes one, `pip install` it, no compiler needed)")
    try:
        manifest = packaged.read(directory)
    except UmlrootError as error:
        return Check(name, Status.FAIL, error.message, error.hint)
    found = packaged.Packaged(directory, manifest)
    if manifest.machine != platform.machine():
        return Check(name, Status.WARN, f"{directory} is for {manifest.machine}, this machine "
                     f"is {platform.machine()}: not used", "install the wheel for this machine")
    problems = wheel.installed_files_ok(found)
    if problems:
        return Check(name, Status.FAIL, f"{directory}: {'; '.join(problems)}",
                     f"reinstall it (`pip install --force-reinstall {packaged.DISTRIBUTION}`)")
    detail = f"kernel {manifest.record.version} (build {manifest.record.fragment_hash}) and " \
             f"guest init in {directory}, checksums match"
    stale = []
    if manifest.record.fragment_hash != build_id(fragment_text()):
        stale.append("its kernel was built with another kernel.config or patches")
    if manifest.init_hash != guestinit.source_hash(guestinit.sources()):
        stale.append("its guest init is from other sources (umlroot compiles its own)")
    if stale:
        return Check(name, Status.WARN, f"{detail}; made by umlroot {manifest.umlroot}: "
                     + "; ".join(stale), f"install the {packaged.DISTRIBUTION} made for this "
                                         "umlroot (`umlroot kernel wheel DIR`)")
    return Check(name, Status.OK, detail)


def check_guest_init() -> Check:
    name = "guest init"
    try:
        built = guestinit.build_guest_init()
        wheel_init = packaged.prebuilt_init(guestinit.source_hash(guestinit.sources()))
        if wheel_init is not None and built == wheel_init:
            return Check(name, Status.OK, f"prebuilt, from the {packaged.DISTRIBUTION} wheel "
                                          f"(no C compiler needed): {built}")
        return Check(name, Status.OK, f"in the cache (built here or imported): {built}")
    except UmlrootError as error:
        return Check(name, Status.FAIL, error.message,
                     error.hint or "install gcc and static libc (Debian: gcc libc6-dev)")
    except Exception as error:  # noqa: BLE001 - doctor reports, it does not crash
        return Check(name, Status.FAIL, f"building the guest init failed: "
                     f"{type(error).__name__}: {error}", "rerun with --debug")


def compile_static_probe(name: str) -> Check:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return Check(name, Status.FAIL, "no C compiler", "install gcc (Debian: gcc libc6-dev)")
    with tempfile.TemporaryDirectory(prefix="umlroot-doctor-") as tmp:
        src = Path(tmp) / "t.c"
        src.write_text("int main(void) { return 0; }\n")
        done = subprocess.run([cc, "-static", "-o", str(Path(tmp) / "t"), str(src)],
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return Check(name, Status.FAIL, f"{cc} -static fails: {done.stderr.strip()[-200:]}",
                     "install static libc (Debian: libc6-dev)")
    return Check(name, Status.OK, f"{cc} links static programs")


def check_build_tools(have_kernel: bool) -> Check:
    missing = missing_tools()
    if not missing:
        return Check("kernel build tools", Status.OK, " ".join(REQUIRED_TOOLS))
    # Only `umlroot kernel build` needs them: with a kernel at hand this is a warning.
    return Check("kernel build tools", Status.WARN if have_kernel else Status.FAIL,
                 f"missing: {' '.join(missing)}",
                 "Debian: apt-get install gcc make flex bison bc xz-utils patch libc6-dev")


MEMORY_CHECK = "guest memory"


def check_memory(choice: KernelChoice | None, boot: probe.ProbeResult | None) -> Check:
    """Where `umlroot run` will get the guest's memory, judged as run does it:
    a kernel with the memfd patch (its record says so, or its boot mapped no
    memory file) needs no directory; otherwise UML's search directory must
    allow executable mappings and should hold the default --mem."""
    backing = guestmem.backing(choice.patches if choice else None)
    booted_without_file = boot is not None and boot.ok and boot.memory_dir is None
    if backing is guestmem.Backing.MEMFD or booted_without_file:
        return Check(MEMORY_CHECK, Status.OK, "memfd_create(): anonymous shared memory, so "
                     "/dev/shm, its size and noexec do not matter")
    return check_memory_dir(guestmem.search_dir())


def check_memory_dir(directory: Path) -> Check:
    """The directory UML maps its memory file from, for a kernel without memfd."""
    problem = guestmem.exec_mmap_works(directory)
    if problem is not None:
        return Check(MEMORY_CHECK, Status.FAIL,
                     f"{directory}: cannot map a file executable: {problem} "
                     "(UML maps guest memory from there)", guestmem.memdir_hint(DEFAULT_MEM))
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    detail = f"{directory}: exec mmap works, {free // 2**20} MiB free"
    if free < GUEST_MEMORY_BYTES:
        return Check(MEMORY_CHECK, Status.WARN,
                     detail + f" (less than the default --mem {DEFAULT_MEM}: a guest that "
                     "touches more dies of SIGBUS)", guestmem.memdir_hint(DEFAULT_MEM))
    return Check(MEMORY_CHECK, Status.OK, detail)


def check_scratch_space() -> Check:
    """Where scratch disks go, on what, and how much room there is."""
    parent = rundir.parent_dir()
    kind = rundir.filesystem_type(parent) or "unknown filesystem"
    try:
        free = shutil.disk_usage(parent).free
    except OSError as error:
        return Check("scratch space", Status.FAIL, f"{parent}: {error.strerror}",
                     "set TMPDIR to a directory you can write")
    detail = f"{parent} ({kind}, {free / 2**30:.1f} GiB free)"
    if kind in rundir.MEMORY_FILESYSTEMS:
        return Check("scratch space", Status.WARN, detail + ": in memory, so what a command "
                     "writes costs RAM twice", "set TMPDIR to a directory on disk")
    if free < SCRATCH_LOW:
        return Check("scratch space", Status.WARN, detail + ": a command that writes more "
                     "fails (exit 125)", "set TMPDIR to a larger filesystem")
    return Check("scratch space", Status.OK, detail)


def check_run_dirs() -> Check:
    """Sweep the run directories of killed runs (the next `run` would too)."""
    swept = rundir.sweep_stale()
    where = " and ".join(str(p) for p in rundir.sweep_dirs())
    if not swept.removed:
        return Check("run directories", Status.OK,
                     f"none left by killed runs in {where} ({swept.live} in use)")
    return Check("run directories", Status.INFO,
                 f"removed {len(swept.removed)} left by killed runs "
                 f"({swept.freed / 2**20:.0f} MiB); {swept.live} in use")


def check_nofile() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    detail = f"soft {soft}, hard {hard_text} (umlroot raises soft to hard)"
    if hard != resource.RLIM_INFINITY and hard < MIN_NOFILE_HARD:
        return Check("open files limit", Status.WARN, detail,
                     f"raise the hard RLIMIT_NOFILE to >= {MIN_NOFILE_HARD} (limits.conf): "
                     "hostfs holds one host fd per open guest file")
    return Check("open files limit", Status.OK, detail)


def check_cpu() -> Check:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ["xsave", "avx", "avx2", "avx512f", "amx_tile"]
    present = [f for f in wanted if f in flags] or ["none of " + " ".join(wanted)]
    note = " (UML < 6.13 cannot run here)" if {"avx512f", "amx_tile"} & flags else ""
    return Check("CPU XSAVE features", Status.INFO, " ".join(present) + note)


def check_network() -> Check:
    """`--net` is optional: without its helper everything else works (WARN)."""
    name = "network helper (--net)"
    try:
        path = net.find_helper()
        with tempfile.TemporaryDirectory(prefix="umlroot-doctor-") as scratch, \
                net.network(Path(scratch)):
            pass
    except UmlrootError as error:
        return Check(name, Status.WARN, error.message, error.hint)
    return Check(name, Status.OK, f"{path} with slirp answers; the host's loopback is "
                                  f"{net.HOST_ADDRESS} inside")


def collect(echo: Callable[[Check], None]) -> list[Check]:
    checks = []

    def add(check: Check) -> None:
        checks.append(check)
        echo(check)

    add(check_python())
    kernel, choice = find_kernel_check()
    add(kernel)
    boot = None
    if choice is not None:
        report = boot_checks(choice)
        boot = report.result
        for check in report.checks:
            add(check)
    add(check_memory(choice, boot))
    add(check_kernel_wheel())
    add(check_guest_init())
    add(check_build_tools(choice is not None))
    add(check_scratch_space())
    add(check_run_dirs())
    add(check_network())
    add(check_nofile())
    add(check_cpu())
    return checks


def run_doctor() -> bool:
    checks = collect(lambda check: click.echo(check.line()))
    failed = [c.name for c in checks if c.status is Status.FAIL]
    if failed:
        click.echo(f"umlroot run will not work: fix {', '.join(failed)}", err=True)
    return not failed
