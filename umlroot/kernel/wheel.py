"""`umlroot kernel wheel DIR`: the cached kernel and the prebuilt guest init as
a platform wheel, `umlroot_kernel-<kernel version>[.<build>]-py3-none-<tag>.whl`.

`pip install` puts it in place; umlroot then finds it (packaged.py) with no
cache and no compiler. The wheel carries what `umlroot kernel export` packs
(archive.bundle: kernel, init, manifest), so a wheel and an export archive of
one build are the same three files.

The platform tag is read from the binaries, not assumed: the guest init is
static; the UML kernel is normally linked against glibc, and the newest
`GLIBC_x.y` symbol version it needs decides `manylinux_x_y_<arch>` (glibc is
backward compatible, so that is the oldest glibc it runs on). A kernel that
needs any library outside glibc is refused (no wheel could promise it). A
fully static kernel (CONFIG_STATIC_LINK=y) gets the manylinux 2.17 and
musllinux 1.1 tags, since it needs no libc at all.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import os
import re
import struct
import zipfile
from pathlib import Path

from umlroot import log
from umlroot.version import __version__
from umlroot.errors import ExitCode, UmlrootError
from umlroot.kernel import archive, packaged
from umlroot.kernel.download import file_sha256
from umlroot.kernel.fragment import fragment_text
from umlroot.kernel.manifest import INIT, KERNEL, MANIFEST, Manifest
from umlroot.kernel.patches import build_id, shipped_patches

# The glibc libraries the manylinux policy lets a wheel rely on (the ones a
# UML kernel can link; never X11, GL and the like).
GLIBC_LIBRARIES = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
    "libutil.so.1", "libresolv.so.2", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
})
# Oldest tags worth writing: no glibc before 2.17 (CentOS 7) is supported by
# anyone; a static binary also runs on musl (Alpine).
FLOOR = (2, 17)
STATIC_TAGS = ("manylinux_2_17", "musllinux_1_1")
_MACHINES = {62: "x86_64", 183: "aarch64"}


def _fail(message: str, hint: str | None = None) -> UmlrootError:
    return UmlrootError(message, hint=hint, exit_code=ExitCode.FAILED)


# --- What a binary needs: DT_NEEDED and GNU symbol versions (.gnu.version_r) -------


@dataclasses.dataclass(frozen=True)
class ElfNeeds:
    arch: str
    libraries: tuple[str, ...]  # DT_NEEDED
    versions: tuple[str, ...]  # GLIBC_2.34, ... (from the version-needed table)

    @property
    def static(self) -> bool:
        return not self.libraries

    def glibc(self) -> tuple[int, int] | None:
        found = [(int(m.group(1)), int(m.group(2))) for v in self.versions
                 if (m := re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", v))]
        return max(found) if found else None


def _cstring(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("ascii", "replace")


def elf_needs(path: Path) -> ElfNeeds:
    """Read a 64-bit little-endian ELF's dynamic needs (no binutils needed)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise _fail(f"{path}: not a 64-bit little-endian ELF file")
    (_, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, _) = struct.unpack_from(
        "<HHIQQQIHHHHHH", data, 16)
    arch = _MACHINES.get(machine)
    if arch is None:
        raise _fail(f"{path}: ELF machine {machine}, no wheel tag known for it")
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]

    def strtab(index: int) -> bytes:
        _, _, _, _, offset, size, _, _, _, _ = sections[index]
        return data[offset:offset + size]

    libraries: list[str] = []
    versions: list[str] = []
    for _, kind, _, _, offset, size, link, info, _, _ in sections:
        if kind == 6:  # SHT_DYNAMIC: (d_tag, d_val) pairs; DT_NEEDED = 1
            names = strtab(link)
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == 1:
                    libraries.append(_cstring(names, value))
        elif kind == 0x6FFFFFFE:  # SHT_GNU_verneed: `info` entries, each with aux names
            names = strtab(link)
            pos = offset
            for _ in range(info):
                _, count, _, aux, following = struct.unpack_from("<HHIII", data, pos)
                apos = pos + aux
                for _ in range(count):
                    _, _, _, name, anext = struct.unpack_from("<IHHII", data, apos)
                    versions.append(_cstring(names, name))
                    apos += anext
                pos += following
    return ElfNeeds(arch, tuple(libraries), tuple(sorted(set(versions))))


def platform_tag(binaries: list[Path]) -> str:
    """The wheel platform tag all these binaries honestly run under."""
    needs = [elf_needs(path) for path in binaries]
    arches = {need.arch for need in needs}
    if len(arches) != 1:
        raise _fail(f"the binaries are for different machines: {', '.join(sorted(arches))}")
    arch = arches.pop()
    for path, need in zip(binaries, needs):
        foreign = [lib for lib in need.libraries if lib not in GLIBC_LIBRARIES]
        if foreign:
            raise _fail(f"{path} needs {', '.join(foreign)}: a wheel can only rely on glibc",
                        "build the kernel static (CONFIG_STATIC_LINK=y) or without that library")
        if "GLIBC_PRIVATE" in need.versions:
            raise _fail(f"{path} uses GLIBC_PRIVATE symbols: it runs only with the glibc "
                        "it was built against")
    if all(need.static for need in needs):
        return ".".join(f"{tag}_{arch}" for tag in STATIC_TAGS)
    newest = max([FLOOR, *(n.glibc() or FLOOR for n in needs)])
    return f"manylinux_{newest[0]}_{newest[1]}_{arch}"


# --- Writing the wheel ---------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def _source_note(manifest: Manifest, version: str) -> str:
    record = manifest.record
    patches = " ".join(record.patches or ()) or "none"
    return f"""umlroot-kernel {version}: the Linux kernel (User Mode Linux), licensed
GPL-2.0-only, and umlroot's guest init (GPL-2.0-or-later), built by umlroot
{manifest.umlroot} for {manifest.machine}.

Kernel source: {record.source}
Build id (umlroot's kernel.config + patches): {record.fragment_hash}
umlroot's patches applied: {patches}
Built: {record.built_at}

The patches and the kernel.config fragment are in source/ when they are the
ones this build used; they also ship with umlroot {manifest.umlroot}
(umlroot/kernel/patches/, umlroot/kernel/kernel.config), and the guest init's
sources in its guest-init/ directory.
"""


def _init_py(version: str) -> str:
    return f'''"""umlroot-kernel {version}: a UML kernel and umlroot's guest init, prebuilt.

umlroot finds these files itself (`umlroot kernel info` shows it); nothing
here needs importing.
"""

from pathlib import Path

DIRECTORY = Path(__file__).parent
KERNEL = DIRECTORY / "linux"
INIT = DIRECTORY / "init"
MANIFEST = DIRECTORY / "manifest.json"
'''


def _metadata(version: str, manifest: Manifest) -> str:
    record = manifest.record
    return f"""Metadata-Version: 2.1
Name: {packaged.DISTRIBUTION}
Version: {version}
Summary: Prebuilt User Mode Linux kernel {record.version} and guest init for umlroot
License: GPL-2.0-only
Requires-Python: >=3.10
Description-Content-Type: text/plain

{_source_note(manifest, version)}"""


def _wheel_text(tag: str) -> str:
    return f"""Wheel-Version: 1.0
Generator: umlroot {__version__} (umlroot kernel wheel)
Root-Is-Purelib: false
Tag: py3-none-{tag}
"""


def _source_files(manifest: Manifest) -> dict[str, bytes]:
    """The fragment and patches, if they are what this build used."""
    text = fragment_text()
    if manifest.record.fragment_hash != build_id(text):
        log.warn("the kernel was built with another kernel.config or patches than this "
                 "umlroot's: the wheel names them but does not carry them")
        return {}
    files = {"source/kernel.config": text.encode()}
    for patch in shipped_patches():
        files[f"source/patches/{patch.name}"] = patch.text
    return files


def _date_time(built_at: str) -> tuple[int, int, int, int, int, int]:
    """Zip timestamps from the build's date: the same build gives the same wheel."""
    try:
        when = datetime.datetime.fromisoformat(built_at)
    except ValueError:
        when = datetime.datetime(1980, 1, 1)
    return (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)


@dataclasses.dataclass(frozen=True)
class WheelInfo:
    path: Path
    version: str
    tag: str


def wheel_version(kernel_version: str, build: int | None) -> str:
    return kernel_version if build is None else f"{kernel_version}.{build}"


def make_wheel(directory: Path, explicit: Path | None = None,
               build: int | None = None) -> WheelInfo:
    parts = archive.bundle(explicit)
    manifest = parts.manifest
    tag = platform_tag([parts.kernel, parts.init])
    version = wheel_version(manifest.record.version, build)
    pkg = packaged.PACKAGE
    dist_info = f"{pkg}-{version}.dist-info"
    files: list[tuple[str, bytes, bool]] = [  # (path in the wheel, content, executable)
        (f"{pkg}/__init__.py", _init_py(version).encode(), False),
        (f"{pkg}/{KERNEL}", parts.kernel.read_bytes(), True),
        (f"{pkg}/{INIT}", parts.init.read_bytes(), True),
        (f"{pkg}/{MANIFEST}", manifest.to_json().encode(), False),
        (f"{pkg}/SOURCE.txt", _source_note(manifest, version).encode(), False),
        *((f"{pkg}/{path}", data, False) for path, data in _source_files(manifest).items()),
        (f"{dist_info}/METADATA", _metadata(version, manifest).encode(), False),
        (f"{dist_info}/WHEEL", _wheel_text(tag).encode(), False),
        (f"{dist_info}/top_level.txt", f"{pkg}\n".encode(), False),
    ]
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data, _ in files)
    files.append((f"{dist_info}/RECORD", (record + f"{dist_info}/RECORD,,\n").encode(), False))

    directory.mkdir(parents=True, exist_ok=True)
    destination = directory.absolute() / f"{pkg}-{version}-py3-none-{tag}.whl"
    when = _date_time(manifest.record.built_at)
    with archive.replaced_atomically(destination) as raw, zipfile.ZipFile(raw, "w") as whl:
        for path, data, executable in files:
            info = zipfile.ZipInfo(path, date_time=when)
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data, compresslevel=9)
    size = destination.stat().st_size / 2**20
    log.say(f"wrote {destination} ({size:.1f} MiB; kernel {manifest.record.version}, build "
            f"{manifest.record.fragment_hash}, guest init {manifest.init_hash}, {tag})")
    return WheelInfo(destination, version, tag)


def installed_files_ok(found: packaged.Packaged) -> list[str]:
    """Problems with an installed wheel's files (empty: none): checksums, modes."""
    problems = []
    for name, path in ((KERNEL, found.kernel), (INIT, found.init)):
        try:
            if file_sha256(path) != found.manifest.sha256.get(name):
                problems.append(f"{name} does not match its checksum")
        except OSError as e:
            problems.append(f"{name}: {e.strerror}")
            continue
        if not os.access(path, os.X_OK):
            problems.append(f"{name} is not executable")
    return problems
