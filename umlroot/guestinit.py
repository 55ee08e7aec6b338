"""Build the guest init (static C, guest-init/) and cache it by source hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from umlroot import log
from umlroot.cache import cache_dir, exclusive_lock
from umlroot.errors import UmlrootError
from umlroot.kernel import packaged

_CFLAGS = ["-static", "-O2", "-Wall", "-Wextra", "-std=gnu11"]


def sources() -> dict[str, bytes]:
    package = resources.files("umlroot.guest_init")
    return {
        entry.name: entry.read_bytes()
        for entry in package.iterdir()
        if entry.name.endswith((".c", ".h"))
    }


def compiler() -> str | None:
    """The C compiler: $CC, else cc, else gcc."""
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def source_hash(sources: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    digest.update(" ".join(_CFLAGS).encode())
    return digest.hexdigest()[:16]


def init_path(hash_: str) -> Path:
    """Where the init built from sources with this hash lives in the cache."""
    return cache_dir() / "init" / hash_ / "init"


def lock_path() -> Path:
    return cache_dir() / "init.lock"


def build_guest_init() -> Path:
    """Return the path of the cached init binary, else the kernel wheel's
    prebuilt one, building it if neither is there (a kernel archive made by
    `umlroot kernel export` brings it prebuilt into the cache)."""
    texts = sources()
    hash_ = source_hash(texts)
    target = init_path(hash_)
    if target.exists():
        return target
    prebuilt = packaged.prebuilt_init(hash_)
    if prebuilt is not None:
        return prebuilt
    cc = compiler()
    if cc is None:
        raise UmlrootError(
            "no C compiler found to build the guest init",
            hint="install the umlroot-kernel wheel made for this umlroot (it carries the init "
                 "prebuilt), import a kernel exported by this umlroot version (`umlroot "
                 "kernel import FILE`), or install gcc and the static C library (Debian: "
                 "apt-get install gcc libc6-dev)",
        )
    with exclusive_lock(lock_path(), what="the guest init build"):
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            work_dir = Path(work)
            for name, data in texts.items():
                (work_dir / name).write_bytes(data)
            c_files = sorted(str(work_dir / n) for n in texts if n.endswith(".c"))
            binary = work_dir / "init"
            argv = [cc, *_CFLAGS, "-o", str(binary), *c_files]
            log.show_command(argv)
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                first = next((line for line in lines if "error" in line), lines[-1] if lines else "")
                missing_libc = "cannot find -lc" in result.stderr
                raise UmlrootError(
                    f"building the guest init failed ({cc} exited {result.returncode}): {first}",
                    hint="install the static C library (Debian: apt-get install libc6-dev)"
                    if missing_libc else "rerun with --debug to see the compiler command",
                )
            os.replace(binary, target)
    return target
