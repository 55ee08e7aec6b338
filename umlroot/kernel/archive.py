"""`umlroot kernel export FILE` / `umlroot kernel import FILE`: one kernel
build serves many machines (a CI cache, a team share).

The archive is a gzip'd tar of exactly three members:
  manifest.json  format, umlroot version, host machine, the build record,
                 the guest init's source hash, a SHA-256 per file
  linux          the UML kernel binary
  init           the static guest init built from this umlroot's sources
The guest init travels with the kernel because umlroot compiles it with the
host C compiler on first use: a CI runner or a container without gcc could
not run anything otherwise.

Import checks before it installs anything: the member list, the format and
the machine, each file's SHA-256, the kernel's own version against the
record's, and one boot of the kernel (seccomp mode, else ptrace mode).
A kernel built by another umlroot configuration (another build id), or an
init from other sources, is installed with a warning (`umlroot run` uses it
until a matching one exists), or refused with --require-current, which is
what a CI cache step wants: a stale archive is rebuilt, not used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from umlroot import log
from umlroot.version import __version__
from umlroot.kernel import guest_init as guestinit
from umlroot.cache import exclusive_lock
from umlroot.errors import ExitCode, UmlrootError
from umlroot.kernel import probe, store
from umlroot.kernel.build import install
from umlroot.kernel.download import file_sha256 as _sha256
from umlroot.kernel.fragment import fragment_text
from umlroot.kernel.manifest import INIT, KERNEL, MANIFEST, Manifest
from umlroot.kernel.patches import build_id, carried
from umlroot.kernel.select import Origin, describe_binary, find_kernel

FORMAT = 1
MEMBERS = (MANIFEST, KERNEL, INIT)
# Far above a real kernel (8-30 MB) or init (1 MB): a bound on what a
# corrupt or hostile archive can make us write.
MAX_MEMBER_BYTES = 256 << 20


def _fail(message: str, hint: str | None = None) -> UmlrootError:
    return UmlrootError(message, hint=hint, exit_code=ExitCode.FAILED)


# --- export ------------------------------------------------------------------------


def _cached_entry(explicit: Path | None) -> store.Entry:
    choice = find_kernel(explicit)
    for entry in store.installed():
        if entry.binary.resolve() == choice.path.resolve():
            return entry
    how = {Origin.CACHE: "it has no record",
           Origin.WHEEL: "it is the installed umlroot-kernel wheel's, which is packed already",
           }.get(choice.origin, "it was named by path")
    raise _fail(f"{choice.path} is not a kernel built by `umlroot kernel build` ({how})",
                "export a kernel from the cache (`umlroot kernel info` shows which)")


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o755
    info.mtime = int(path.stat().st_mtime)
    with path.open("rb") as f:
        tar.addfile(info, f)


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What an export archive or a kernel wheel carries."""

    kernel: Path
    init: Path
    manifest: Manifest


def bundle(explicit: Path | None = None) -> Bundle:
    """A cached kernel, this umlroot's guest init (built if needed) and their manifest."""
    entry = _cached_entry(explicit)
    init = guestinit.build_guest_init()
    # Say which patches it carries even where an older record did not.
    record = dataclasses.replace(entry.record, patches=carried(
        entry.record.patches, entry.record.fragment_hash, fragment_text()))
    manifest = Manifest(FORMAT, __version__, platform.machine(), record,
                        guestinit.source_hash(guestinit.sources()),
                        {KERNEL: _sha256(entry.binary), INIT: _sha256(init)})
    return Bundle(entry.binary, init, manifest)


@contextlib.contextmanager
def replaced_atomically(destination: Path) -> Iterator[BinaryIO]:
    """A file written next to `destination` and renamed over it when the block
    ends (removed if it raises): a cache step that reads the file never sees
    half of it."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            yield raw
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def export_kernel(destination: Path, explicit: Path | None = None) -> Manifest:
    parts = bundle(explicit)
    manifest = parts.manifest
    destination = destination.absolute()
    with replaced_atomically(destination) as raw, \
            tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
        text = manifest.to_json().encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(text)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(text))
        _add_file(tar, KERNEL, parts.kernel)
        _add_file(tar, INIT, parts.init)
    size = destination.stat().st_size
    log.say(f"exported kernel {manifest.record.version} (build {manifest.record.fragment_hash}) "
            f"and guest init {manifest.init_hash} to {destination} ({size / 2**20:.1f} MiB)")
    return manifest


# --- import ------------------------------------------------------------------------


def _open_archive(source: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(source, mode="r:*")
    except FileNotFoundError as e:
        raise _fail(f"{source}: no such file") from e
    except (OSError, tarfile.TarError) as e:
        # tarfile's own message spans lines (one per compression it tried).
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a tar archive"
        raise _fail(f"{source} is not a kernel archive ({reason})",
                    "make one with `umlroot kernel export FILE`") from e


def _unpack(source: Path, into: Path) -> Manifest:
    """Copy the three members into `into`, refusing anything else (no paths,
    links or devices from the archive ever reach the file system)."""
    seen: set[str] = set()
    with _open_archive(source) as tar:
        try:
            for member in tar:
                if member.name not in MEMBERS or not member.isfile() or member.name in seen:
                    raise _fail(f"{source}: unexpected member {member.name!r}",
                                "make it with `umlroot kernel export FILE`")
                if member.size > MAX_MEMBER_BYTES:
                    raise _fail(f"{source}: member {member.name} is {member.size} bytes, "
                                "too big for a kernel archive")
                data = tar.extractfile(member)
                assert data is not None
                with data, (into / member.name).open("wb") as out:
                    shutil.copyfileobj(data, out)
                seen.add(member.name)
        except (OSError, tarfile.TarError, EOFError) as e:
            raise _fail(f"{source}: the archive is damaged ({e})") from e
    missing = [name for name in MEMBERS if name not in seen]
    if missing:
        raise _fail(f"{source}: no {', '.join(missing)} in the archive",
                    "make it with `umlroot kernel export FILE`")
    return Manifest.from_json((into / MANIFEST).read_text())


def _verify(manifest: Manifest, staged: Path, source: Path) -> None:
    if manifest.format != FORMAT:
        raise _fail(f"{source}: archive format {manifest.format}, this umlroot reads {FORMAT}",
                    "export it with the umlroot version that imports it")
    if manifest.machine != platform.machine():
        raise _fail(f"{source} holds a kernel for {manifest.machine}, this machine is "
                    f"{platform.machine()}")
    for name in (KERNEL, INIT):
        if _sha256(staged / name) != manifest.sha256.get(name):
            raise _fail(f"{source}: {name} does not match its checksum (damaged in transit?)")
    (staged / KERNEL).chmod(0o755)
    (staged / INIT).chmod(0o755)
    version, _ = describe_binary(staged / KERNEL)
    if version != manifest.record.version:
        raise _fail(f"{source}: the kernel says it is {version or 'nothing'}, the record says "
                    f"{manifest.record.version}")


def _boot_check(kernel: Path) -> tuple[probe.ProbeSettings, probe.ProbeResult]:
    """Boot once (seccomp mode, else ptrace mode); refuse a kernel that cannot."""
    seccomp = probe.ProbeSettings(seccomp=True)
    result, _ = probe.boot_probe(kernel, seccomp)
    if result.ok:
        return seccomp, result
    ptrace = probe.ProbeSettings()
    fallback, _ = probe.boot_probe(kernel, ptrace)
    if fallback.ok:
        log.warn(f"seccomp mode: the kernel {result.explain()}; ptrace mode works")
        return ptrace, fallback
    raise _fail(f"the imported kernel {fallback.explain()}",
                "run `umlroot doctor` for the host checks")


def _install_init(staged: Path, init_hash: str) -> Path:
    target = guestinit.init_path(init_hash)
    with exclusive_lock(guestinit.lock_path(), what="the guest init build", say=log.say):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".init.{os.getpid()}.tmp")
        shutil.copy2(staged, tmp)
        os.replace(tmp, target)
    return target


@contextlib.contextmanager
def _staging() -> Iterator[Path]:
    kernels = store.kernels_dir()
    kernels.mkdir(parents=True, exist_ok=True)
    # A dot name: store.installed() skips it while it is being checked.
    path = Path(tempfile.mkdtemp(prefix=".import-", dir=kernels))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Mismatch:
    what: str  # how the archive differs from what this umlroot would build
    consequence: str  # what happens if it is imported anyway


def _mismatches(manifest: Manifest) -> list[Mismatch]:
    found = []
    current = build_id(fragment_text())
    if manifest.record.fragment_hash != current:
        found.append(Mismatch(
            f"the kernel was built with another kernel.config or other patches "
            f"(build {manifest.record.fragment_hash}; this umlroot builds {current})",
            "`umlroot run` uses it until `umlroot kernel build` makes a current one"))
    init_hash = guestinit.source_hash(guestinit.sources())
    if manifest.init_hash != init_hash:
        found.append(Mismatch(
            f"the guest init is not this umlroot's ({manifest.init_hash} from umlroot "
            f"{manifest.umlroot}; this one needs {init_hash})",
            "`umlroot run` will build its own with the C compiler"))
    return found


def import_kernel(source: Path, require_current: bool = False) -> store.Entry:
    with _staging() as staged:
        manifest = _unpack(source, staged)
        _verify(manifest, staged, source)
        mismatches = _mismatches(manifest)
        if require_current and mismatches:
            raise _fail(f"{source} is out of date: {'; '.join(m.what for m in mismatches)}",
                        "build a kernel (`umlroot kernel build`) and export it again")
        settings, result = _boot_check(staged / KERNEL)
        record = dataclasses.replace(
            manifest.record,
            imported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"))
        with exclusive_lock(store.lock_path(), what="another kernel install", say=log.say):
            entry = install(staged / KERNEL, record)
        init = _install_init(staged / INIT, manifest.init_hash)
    # The boot check's verdict (and calibrated lpj=, which saves every run
    # 40-90 ms) belongs to the installed path.
    probe.remember(entry.binary, settings, result)
    log.say(f"imported kernel {record.version} (build {record.fragment_hash}, "
            f"{result.explain()}): {entry.binary}")
    log.debug(f"guest init installed: {init}")
    for mismatch in mismatches:
        log.warn(f"{mismatch.what}: {mismatch.consequence}")
    return entry
