"""Where the kernel source comes from: --source, /usr/src, the Debian archive,
or (where APT names no Debian archive) a kernel.org tarball (download.py).

The Debian archive carries kernel sources as `linux-source-X.Y` packages. An
unprivileged user can download one with a private APT state (sources list,
lists, cache and dpkg status all under the umlroot cache), using the archive
URI this machine's own APT configuration names: users sit behind mirrors and
proxies, so umlroot never names a mirror host itself.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from umlroot import log
from umlroot.errors import ExitCode, UmlrootError
from umlroot.kernel.version import MIN_WORKING, KernelVersion

TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tar.zst", ".tar.bz2", ".tgz")
DEFAULT_SUITES = ("trixie-backports", "sid")

# Suites of the Debian archive proper; a host source naming one of these is a
# Debian mirror (not the security archive, not a vendor repository).
_DEBIAN_CODENAMES = frozenset({
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "stable", "testing", "unstable", "oldstable", "experimental",
})


class SourceKind(enum.Enum):
    TREE = "tree"
    TARBALL = "tarball"
    DEBIAN = "debian"
    DOWNLOAD = "download"  # a tarball at a URL, checked against a SHA-256


@dataclasses.dataclass(frozen=True)
class AptSource:
    """One `deb` entry of the host's APT configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None

    def is_debian_archive(self) -> bool:
        for suite in self.suites:
            base = suite.split("-", 1)[0].split("/", 1)[0]
            if base in _DEBIAN_CODENAMES and not suite.endswith("-security"):
                return "security" not in self.uri and "main" in self.components
        return False


def parse_one_line_sources(text: str) -> list[AptSource]:
    """`deb [opts] URI SUITE COMPONENT...` lines (sources.list format)."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = line.split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        options: dict[str, str] = {}
        if words and words[0].startswith("["):
            # Options may contain spaces between the brackets: `[ arch=amd64 ]`.
            joined = " ".join(words)
            end = joined.find("]")
            if end < 0:
                continue
            for option in joined[1:end].split():
                key, _, value = option.partition("=")
                options[key] = value
            words = joined[end + 1:].split()
        if len(words) < 2:
            continue
        found.append(AptSource(uri=words[0], suites=(words[1],),
                               components=tuple(words[2:]),
                               signed_by=options.get("signed-by")))
    return found


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Stanzas of a `.sources` file (deb822 format)."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key is not None:
                fields[key] += " " + raw.strip()  # continuation line
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        if signed_by and not signed_by.startswith("/"):
            signed_by = None  # an inline key block: cannot be passed on one line
        for uri in fields.get("uris", "").split():
            found.append(AptSource(uri=uri, suites=tuple(fields.get("suites", "").split()),
                                   components=tuple(fields.get("components", "").split()),
                                   signed_by=signed_by))
    return found


def host_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    found = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        found += parse_one_line_sources(main_list.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            try:
                if path.suffix == ".list":
                    found += parse_one_line_sources(path.read_text(errors="replace"))
                elif path.suffix == ".sources":
                    found += parse_deb822_sources(path.read_text(errors="replace"))
            except OSError:
                continue  # unreadable file: not ours to complain about
    return found


def debian_archive_source(sources: Iterable[AptSource]) -> AptSource | None:
    for source in sources:
        if source.is_debian_archive():
            return source
    return None


def can_use_debian_archive() -> bool:
    """Whether this host can fetch linux-source from Debian by itself: APT and
    dpkg-deb are there, and its APT sources name a Debian archive."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    return debian_archive_source(host_apt_sources()) is not None


@dataclasses.dataclass(frozen=True)
class InstalledTarball:
    path: Path
    version: KernelVersion


def installed_tarballs(usr_src: Path = Path("/usr/src")) -> list[InstalledTarball]:
    """`/usr/src/linux-source-X.Y.tar.*` from installed linux-source packages, newest first."""
    found = []
    try:
        entries = list(usr_src.iterdir())
    except OSError:
        return []
    for path in entries:
        if path.name.startswith("linux-source-") and path.name.endswith(TARBALL_SUFFIXES):
            try:
                found.append(InstalledTarball(path, KernelVersion.parse(path.name)))
            except UmlrootError:
                continue
    return sorted(found, key=lambda t: t.version, reverse=True)


def usable_installed_tarball(usr_src: Path = Path("/usr/src")) -> InstalledTarball | None:
    for tarball in installed_tarballs(usr_src):
        if tarball.version >= MIN_WORKING:
            return tarball
    return None


def classify_source(path: Path) -> SourceKind:
    """--source: an unpacked tree or a tarball; anything else is a one-line error."""
    if path.is_dir():
        if not (path / "Makefile").is_file() or not (path / "arch" / "um").is_dir():
            raise UmlrootError(f"{path} is not a kernel source tree (no Makefile or arch/um)",
                               exit_code=ExitCode.FAILED)
        return SourceKind.TREE
    if path.is_file() and path.name.endswith(TARBALL_SUFFIXES):
        return SourceKind.TARBALL
    if not path.exists():
        raise UmlrootError(f"--source {path}: no such file or directory",
                           exit_code=ExitCode.FAILED)
    raise UmlrootError(f"--source {path}: not a directory or a .tar.xz/.tar.gz/.tar.zst",
                       exit_code=ExitCode.FAILED)


# --- The Debian archive, through a private APT state ------------------------------


@dataclasses.dataclass(frozen=True)
class DebianPackage:
    name: str  # linux-source-7.3
    deb_version: str  # 7.3.4-1~bpo13+1
    suite: str

    @property
    def version(self) -> KernelVersion:
        return KernelVersion.parse(self.deb_version)


class PrivateApt:
    """apt-get / apt-cache with every state file under `root`: no root needed."""

    def __init__(self, root: Path, uri: str, suite: str, signed_by: str | None,
                 kinds: Sequence[str] = ("deb",)) -> None:
        """kinds: the sources.list line types (`deb`, `deb-src`)."""
        self.root = root
        self.suite = suite
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        options = f"[signed-by={signed_by}] " if signed_by else ""
        (root / "etc" / "sources.list").write_text(
            "".join(f"{kind} {options}{uri} {suite} main\n" for kind in kinds))

    def options(self) -> list[str]:
        opts = {
            "Dir::Etc::sourcelist": str(self.root / "etc" / "sources.list"),
            "Dir::Etc::sourceparts": "-",
            "Dir::State::Lists": str(self.root / "lists"),
            "Dir::Cache": str(self.root / "cache"),
            "Dir::State::status": str(self.root / "status"),
        }
        if os.geteuid() == 0:
            # As root, apt drops to the _apt user, which cannot write our private dirs.
            opts["APT::Sandbox::User"] = "root"
        return [arg for key, value in opts.items() for arg in ("-o", f"{key}={value}")]

    def update(self) -> None:
        """`apt-get update`, which exits 0 even when the mirror is unreachable: look."""
        output = self.run("apt-get", ["-q", "update"], merge_stderr=True)
        for line in output.splitlines():
            if line.startswith(("Err:", "W: Failed to fetch", "E: ")):
                raise UmlrootError(f"apt-get update of {self.suite} failed: {line.strip()}",
                                   hint="check the network or pass --mirror URI or --source",
                                   exit_code=ExitCode.FAILED)

    def run(self, tool: str, args: Sequence[str], *, cwd: Path | None = None,
            merge_stderr: bool = False) -> str:
        argv = [tool, *self.options(), *args]
        log.show_command(argv)
        try:
            done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, text=True, check=False,
                                  stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)
        except FileNotFoundError as e:
            raise UmlrootError(f"{tool} not found: cannot download a kernel source",
                               hint="use --source DIR|TARBALL", exit_code=ExitCode.FAILED) from e
        if done.returncode != 0:
            last = ((done.stderr or done.stdout).strip().splitlines() or ["(no output)"])[-1]
            raise UmlrootError(f"{tool} {args[0]} failed (exit {done.returncode}): {last}",
                               hint="check the network or pass --mirror URI or --source",
                               exit_code=ExitCode.FAILED)
        return done.stdout

    def newest_source_package(self) -> DebianPackage | None:
        self.update()
        names = self.run("apt-cache", ["search", "--names-only", "^linux-source-[0-9.]+$"])
        packages = []
        for line in names.splitlines():
            name = line.split(" ", 1)[0]
            if re.fullmatch(r"linux-source-\d+\.\d+", name):
                packages.append(name)
        if not packages:
            return None
        newest = max(packages, key=KernelVersion.parse)
        policy = self.run("apt-cache", ["show", "--no-all-versions", newest])
        match = re.search(r"^Version:\s*(\S+)", policy, re.MULTILINE)
        if match is None:
            return None
        return DebianPackage(newest, match.group(1), self.suite)

    def download(self, package: DebianPackage, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        self.run("apt-get", ["-q", "download", f"{package.name}={package.deb_version}"],
                 cwd=into)
        debs = sorted(into.glob(f"{package.name}_*.deb"))
        if not debs:
            raise UmlrootError(f"apt-get download {package.name} left no .deb in {into}",
                               exit_code=ExitCode.FAILED)
        return debs[-1]


def find_debian_package(apt_dir: Path, mirror: str | None,
                        suites: Sequence[str]) -> tuple[PrivateApt, DebianPackage]:
    """The newest usable linux-source-X.Y in the first suite that has one."""
    signed_by = None
    if mirror is None:
        host = debian_archive_source(host_apt_sources())
        if host is None:
            raise UmlrootError(
                "no Debian archive in this machine's APT sources to download a kernel source from",
                hint="pass --mirror URI (a Debian mirror) or --source DIR|TARBALL",
                exit_code=ExitCode.FAILED)
        mirror, signed_by = host.uri, host.signed_by
    tried = []
    for suite in suites:
        apt = PrivateApt(apt_dir / suite, mirror, suite, signed_by)
        package = apt.newest_source_package()
        if package is not None and package.version >= MIN_WORKING:
            return apt, package
        tried.append(f"{suite}: {package.name + ' ' + package.deb_version if package else 'none'}")
    raise UmlrootError(f"no linux-source >= {MIN_WORKING.series} at {mirror} ({'; '.join(tried)})",
                       hint="pass --suite, --mirror URI or --source DIR|TARBALL",
                       exit_code=ExitCode.FAILED)


def tarball_from_deb(deb: Path, into: Path) -> Path:
    """Pull usr/src/linux-source-X.Y.tar.* out of the .deb without dpkg -i."""
    into.mkdir(parents=True, exist_ok=True)
    extract = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert extract.stdout is not None
    try:
        tar = subprocess.run(["tar", "-x", "-C", str(into), "--wildcards",
                              "*/linux-source-*.tar.*"],
                             stdin=extract.stdout, capture_output=True, text=True, check=False)
    finally:
        extract.stdout.close()
        extract.wait()
    if extract.returncode != 0 or tar.returncode != 0:
        raise UmlrootError(f"cannot extract the kernel tarball from {deb}: {tar.stderr.strip()}",
                           exit_code=ExitCode.FAILED)
    found = sorted(into.glob("usr/src/linux-source-*.tar.*"))
    if not found:
        raise UmlrootError(f"{deb} holds no usr/src/linux-source-*.tar.*",
                           exit_code=ExitCode.FAILED)
    return found[0]


def unpack_tarball(tarball: Path, into: Path) -> Path:
    """Unpack with the host's tar (it knows xz/zstd) and return the tree's top directory."""
    into.mkdir(parents=True, exist_ok=True)
    argv = ["tar", "-x", "-f", str(tarball), "-C", str(into)]
    if tarball.name.endswith(".tar.zst"):
        argv[1:1] = ["--zstd"]
    log.show_command(argv)
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise UmlrootError(f"cannot unpack {tarball}: {done.stderr.strip()[-300:]}",
                           exit_code=ExitCode.FAILED)
    tops = [p for p in into.iterdir() if p.is_dir()]
    if len(tops) == 1 and (tops[0] / "Makefile").is_file():
        return tops[0]
    if (into / "Makefile").is_file():
        return into
    raise UmlrootError(f"{tarball} does not unpack to one kernel tree", exit_code=ExitCode.FAILED)


def tarball_version(tarball: Path) -> KernelVersion:
    """The version in a tarball's name (linux-source-7.3.tar.xz, linux-6.19.2.tar.gz)."""
    return KernelVersion.parse(tarball.name)
