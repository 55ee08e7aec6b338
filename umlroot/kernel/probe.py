"""Boot a kernel to `init=/bin/true` and read what happened from its console.

No guest init is needed: hostfs shows the host's `/`, the kernel execs the
host's /bin/true as PID 1, which exits at once. "Run /bin/true as init process"
(with its printk timestamp = guest uptime at init) followed by "Attempted to
kill init! exitcode=0x00000000" means exec works. Distro UML kernels < 6.13 on
AVX-512/AMX hosts print "ptrace set fp regs failed, errno = 14" instead.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from umlroot import log
from umlroot.kernel import memory as guestmem
from umlroot.kernel.uml import RealStarter, UmlStarter
from umlroot.cache import cache_dir
from umlroot.errors import UmlrootError

PROBE_TIMEOUT = 30.0

_INIT_RE = re.compile(r"^\[\s*(\d+\.\d+)\]\s+Run /bin/true as init process", re.MULTILINE)
# Both "Calibrating delay loop... 5621.35 BogoMIPS (lpj=N)" and, with lpj= given,
# "Calibrating delay loop (skipped) preset value.. 5600.00 BogoMIPS (lpj=N)".
_LPJ_RE = re.compile(r"Calibrating delay loop.*\(lpj=(\d+)\)")


class ProbeStatus(enum.Enum):
    OK = "ok"  # exec of /bin/true worked
    FP_REGS = "fp-regs"  # UML < 6.13 on an AVX-512/AMX host
    NO_SECCOMP = "no-seccomp"  # seccomp=on asked for, host cannot do it
    NO_TMPEXEC = "no-tmpexec"  # the memory file's directory is mounted noexec
    TIMEOUT = "timeout"
    FAILED = "failed"  # anything else: see `detail`


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    status: ProbeStatus
    uptime: float | None = None  # guest seconds at init
    lpj: int | None = None  # the calibrated loops_per_jiffy, to preset with lpj=
    detail: str = ""  # the line that explains a failure
    # The directory UML mapped guest memory from; None: memfd (a kernel with
    # umlroot's memfd patch), or the boot did not get that far.
    memory_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is ProbeStatus.OK

    def explain(self) -> str:
        if self.status is ProbeStatus.OK:
            return f"boots, init after {self.uptime:.2f} s" if self.uptime is not None else "boots"
        if self.status is ProbeStatus.FP_REGS:
            return ("dies at the first exec (\"ptrace set fp regs failed\"): the AVX-512/AMX "
                    "problem of UML kernels before 6.13")
        if self.status is ProbeStatus.NO_SECCOMP:
            return "seccomp mode does not work on this host (" + self.detail + ")"
        if self.status is ProbeStatus.NO_TMPEXEC:
            return "cannot map its memory file executable (" + self.detail + ")"
        if self.status is ProbeStatus.TIMEOUT:
            return f"did not reach init within {PROBE_TIMEOUT:.0f} s"
        return "does not boot: " + (self.detail or "no output")


def classify(output: str, *, timed_out: bool = False) -> ProbeResult:
    """Turn a probe boot's console output into a verdict (pure: unit-tested on recordings)."""
    return dataclasses.replace(_verdict(output, timed_out),
                               memory_dir=guestmem.used_directory(output))


def _verdict(output: str, timed_out: bool) -> ProbeResult:
    lpj_match = _LPJ_RE.search(output)
    lpj = int(lpj_match.group(1)) if lpj_match else None
    init = _INIT_RE.search(output)
    if "ptrace set fp regs failed" in output:
        return ProbeResult(ProbeStatus.FP_REGS, lpj=lpj,
                           detail=_line_with(output, "ptrace set fp regs failed"))
    if "SECCOMP userspace requested but not functional" in output:
        return ProbeResult(ProbeStatus.NO_SECCOMP,
                           detail=_line_with(output, "Checking that seccomp filters"))
    if "PROT_EXEC mmap in" in output and init is None and "...OK" not in _line_with(
            output, "PROT_EXEC mmap in"):
        return ProbeResult(ProbeStatus.NO_TMPEXEC, detail=_line_with(output, "PROT_EXEC mmap in"))
    if init is not None and "Attempted to kill init! exitcode=0x00000000" in output:
        return ProbeResult(ProbeStatus.OK, uptime=float(init.group(1)), lpj=lpj)
    if timed_out:
        return ProbeResult(ProbeStatus.TIMEOUT, lpj=lpj)
    for marker in ("Kernel panic", "fatal", "Error", "error"):
        if marker in output:
            return ProbeResult(ProbeStatus.FAILED, lpj=lpj, detail=_line_with(output, marker))
    lines = [line for line in output.splitlines() if line.strip()]
    return ProbeResult(ProbeStatus.FAILED, lpj=lpj, detail=lines[-1].strip() if lines else "")


def _line_with(output: str, needle: str) -> str:
    for line in output.splitlines():
        if needle in line:
            return re.sub(r"^\[\s*\d+\.\d+\]\s*", "", line).strip()
    return ""


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    seccomp: bool = False
    cpus: int = 1
    lpj: int | None = None
    extra: tuple[str, ...] = ()


def probe_argv(kernel: Path, uml_dir: Path, settings: ProbeSettings) -> list[str]:
    argv = [str(kernel), "mem=64M"]
    if settings.seccomp:
        argv.append("seccomp=on")
    if settings.cpus > 1:
        argv.append(f"ncpus={settings.cpus}")
    if settings.lpj:
        argv.append(f"lpj={settings.lpj}")
    argv += ["rootfstype=hostfs", "rootflags=/", "ro", "init=/bin/true", "printk.time=1",
             # Only con0 (the boot console) to our pipe; no other channels or serial lines.
             "con=null", "con0=null,fd:1", "ssl=null",
             # pid/mconsole files in a directory we remove, not ~/.uml.
             f"uml_dir={uml_dir}", *settings.extra]
    return argv


def boot_probe(kernel: Path, settings: ProbeSettings = ProbeSettings(),
               timeout: float = PROBE_TIMEOUT,
               starter: UmlStarter | None = None) -> tuple[ProbeResult, float]:
    """Boot once; return the verdict and the host wall time of the whole boot.
    Past `timeout`, UML and every process it made are killed."""
    starter = starter if starter is not None else RealStarter()
    with tempfile.TemporaryDirectory(prefix="umlroot-probe-") as uml_dir:
        argv = probe_argv(kernel, Path(uml_dir), settings)
        console = Path(uml_dir) / "console"
        start = time.monotonic()
        timed_out = False
        # UML writes its early checks on stderr and the console on fd 1: keep both.
        with open(console, "w+b") as out:
            try:
                process = starter.start(argv, output=out.fileno())
            except OSError as e:
                return ProbeResult(ProbeStatus.FAILED, detail=f"cannot execute {kernel}: "
                                   f"{e.strerror}"), 0.0
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                wall = time.monotonic() - start
                process.kill_group()  # leftovers too, or all of it on timeout
            out.seek(0)
            output = out.read().decode(errors="replace")
    log.debug(f"probe output of {kernel}:\n{output}")
    return classify(output, timed_out=timed_out), wall


# --- Probe results cached per kernel file and host CPU ----------------------------


def cpu_fingerprint() -> str:
    """Hash of the host CPU's model and flags: a kernel that works on one CPU may not on another."""
    wanted = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                wanted.append(line)
                if len(wanted) >= 2:
                    break
    except OSError:
        pass
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]


def _cache_key(kernel: Path, settings: ProbeSettings) -> str | None:
    try:
        st = kernel.resolve().stat()
    except OSError:
        return None
    return "|".join([str(kernel.resolve()), str(st.st_size), str(st.st_mtime_ns),
                     cpu_fingerprint(), f"seccomp={settings.seccomp}", f"cpus={settings.cpus}"])


def _cache_file() -> Path:
    return cache_dir() / "probes.json"


def _load() -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_probe(kernel: Path, settings: ProbeSettings = ProbeSettings()) -> ProbeResult | None:
    key = _cache_key(kernel, settings)
    entry = _load().get(key) if key else None
    if not isinstance(entry, dict):
        return None
    try:
        uptime = entry.get("uptime")
        lpj = entry.get("lpj")
        return ProbeResult(ProbeStatus(entry["status"]),
                           uptime=float(uptime) if isinstance(uptime, (int, float)) else None,
                           lpj=int(lpj) if isinstance(lpj, int) else None,
                           detail=str(entry.get("detail", "")))
    except (KeyError, ValueError):
        return None


def remember(kernel: Path, settings: ProbeSettings, result: ProbeResult) -> None:
    """Record a verdict; timeouts are not recorded (the machine may just have
    been busy), nor a memory directory refused (that depends on the mounts
    of the moment, e.g. a container's /dev/shm, not on the kernel)."""
    key = _cache_key(kernel, settings)
    if key is None or result.status in (ProbeStatus.TIMEOUT, ProbeStatus.NO_TMPEXEC):
        return
    data = _load()
    data[key] = {"status": result.status.value, "uptime": result.uptime, "lpj": result.lpj,
                 "detail": result.detail}
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".probes.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as e:
        log.debug(f"cannot record the probe result in {path}: {e}")


def probe(kernel: Path, settings: ProbeSettings = ProbeSettings(), *,
          use_cache: bool = True) -> ProbeResult:
    """A cached verdict if there is one, else boot once and remember the verdict."""
    if use_cache:
        cached = cached_probe(kernel, settings)
        if cached is not None:
            return cached
    result, _ = boot_probe(kernel, settings)
    remember(kernel, settings, result)
    return result


def preset_lpj(kernel: Path) -> int | None:
    """The calibrated loops_per_jiffy recorded for this kernel on this CPU, if any.

    Passing it back as `lpj=N` skips the delay-loop calibration, which at HZ=100
    costs 40-90 ms of every boot (most of the boot time of umlroot's kernel).
    """
    for settings in (ProbeSettings(seccomp=True), ProbeSettings()):
        cached = cached_probe(kernel, settings)
        if cached is not None and cached.lpj:
            return cached.lpj
    return None


@dataclasses.dataclass(frozen=True)
class BenchResult:
    cpus: int
    uptimes: tuple[float, ...]
    walls: tuple[float, ...]

    def summary(self) -> str:
        return (f"ncpus={self.cpus}: init at median {statistics.median(self.uptimes):.3f} s "
                f"guest uptime (min {min(self.uptimes):.2f}, max {max(self.uptimes):.2f}; "
                f"printk resolution 0.01 s), host wall to exit median "
                f"{statistics.median(self.walls):.3f} s, n={len(self.uptimes)}")


def boot_bench(kernel: Path, runs: int, settings: ProbeSettings) -> BenchResult:
    uptimes, walls = [], []
    for _ in range(runs):
        result, wall = boot_probe(kernel, settings)
        if not result.ok or result.uptime is None:
            raise UmlrootError(f"{kernel} {result.explain()}")
        uptimes.append(result.uptime)
        walls.append(wall)
    return BenchResult(settings.cpus, tuple(uptimes), tuple(walls))
