"""`umlroot kernel build`: fetch a source, configure it with umlroot's fragment,
compile it with a progress display, and install the binary in the cache."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from umlroot import log
from umlroot.cache import cache_dir, exclusive_lock
from umlroot.errors import ExitCode, UmlrootError
from umlroot.kernel import download, fragment, patches, probe, store
from umlroot.kernel import source as ksource
from umlroot.kernel.version import KernelVersion, check_buildable

REQUIRED_TOOLS = ("gcc", "make", "flex", "bison", "bc", "xz", "tar", "patch")
# CC steps of the last measured build (7.3, defconfig + fragment): the first
# build's progress estimate; later builds use the previous build's count.
DEFAULT_COMPILE_STEPS = 980


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    source: Path | None = None
    url: str | None = None  # --source URL: downloaded, checked against sha256
    sha256: str | None = None  # --sha256: what --source (URL or file) must be
    suites: tuple[str, ...] = ksource.DEFAULT_SUITES
    mirror: str | None = None
    jobs: int = 0  # 0: one per CPU
    force: bool = False
    keep_tree: bool = False


@dataclasses.dataclass(frozen=True)
class SourcePlan:
    kind: ksource.SourceKind
    description: str
    source_id: str
    version: KernelVersion | None  # known before unpacking, if the name tells
    path: Path | None = None  # tree or tarball (a download's once fetched)
    url: str | None = None
    sha256: str | None = None
    apt: ksource.PrivateApt | None = None
    package: ksource.DebianPackage | None = None


class Outcome(enum.Enum):
    BUILT = "built"
    UP_TO_DATE = "up-to-date"


@dataclasses.dataclass(frozen=True)
class BuildResult:
    outcome: Outcome
    entry: store.Entry


def missing_tools(tools: Iterable[str] = REQUIRED_TOOLS) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _tarball_plan(path: Path, what: str) -> SourcePlan:
    path = path.resolve()
    st = path.stat()
    try:
        version: KernelVersion | None = ksource.tarball_version(path)
    except UmlrootError:
        version = None  # the Makefile will tell, after unpacking
    return SourcePlan(ksource.SourceKind.TARBALL, f"{what} {path}",
                      f"tarball:{path}:{st.st_size}:{st.st_mtime_ns}", version, path=path)


def _download_plan(url: str, sha256: str, what: str) -> SourcePlan:
    try:
        version: KernelVersion | None = ksource.tarball_version(Path(download.file_name(url)))
    except UmlrootError:
        version = None
    # Identified by content: the same tarball from another URL is the same source.
    return SourcePlan(ksource.SourceKind.DOWNLOAD, f"{what} {url} (SHA-256 {sha256[:16]}...)",
                      f"sha256:{sha256}", version, url=url, sha256=sha256)


def _pinned_plan() -> SourcePlan:
    pinned = download.PINNED
    if pinned.sha256 is None:
        raise UmlrootError(
            "no Debian archive in this machine's APT sources, and this umlroot ships no "
            f"verified SHA-256 for kernel.org's linux-{pinned.version}",
            hint=f"pass --source {pinned.url} --sha256 HEX (kernel.org's sha256sums.asc "
                 "lists it), --source FILE, or --mirror URI (a Debian mirror)",
            exit_code=ExitCode.FAILED)
    log.say(f"no Debian archive in this machine's APT sources: building kernel.org's "
            f"linux-{pinned.version} (SHA-256 pinned in umlroot)")
    return _download_plan(pinned.url, pinned.sha256, "kernel.org")


def plan_source(options: BuildOptions) -> SourcePlan:
    """Decide where the source comes from (downloads only the package index)."""
    if options.url is not None:
        if options.sha256 is None:
            raise UmlrootError(f"--source {options.url}: a download needs --sha256 HEX",
                               hint="give the SHA-256 its publisher lists (kernel.org: "
                                    "sha256sums.asc), or download it and pass --source FILE",
                               exit_code=ExitCode.FAILED)
        return _download_plan(options.url, options.sha256, "download")
    if options.source is not None:
        kind = ksource.classify_source(options.source)
        if kind is ksource.SourceKind.TREE:
            tree = options.source.resolve()
            version = KernelVersion.from_makefile(tree / "Makefile")
            if (tree / ".config").exists():
                # make O=... refuses a configured tree; say so before starting.
                raise UmlrootError(f"{tree} is configured already (has a .config)",
                                   hint="run `make mrproper` in it, or pass the tarball instead",
                                   exit_code=ExitCode.FAILED)
            return SourcePlan(kind, f"tree {tree}", f"tree:{tree}:{version}", version, path=tree)
        if options.sha256 is not None:
            download.verify_file(options.source, options.sha256)
            return dataclasses.replace(_tarball_plan(options.source, "tarball"),
                                       source_id=f"sha256:{options.sha256}")
        return _tarball_plan(options.source, "tarball")
    if options.sha256 is not None:
        raise UmlrootError("--sha256 checks a --source URL or FILE: name one",
                           exit_code=ExitCode.FAILED)
    installed = ksource.usable_installed_tarball()
    if installed is not None:
        return _tarball_plan(installed.path, "installed")
    if options.mirror is None and not ksource.can_use_debian_archive():
        return _pinned_plan()
    log.say(f"fetching: looking for the newest linux-source in {', '.join(options.suites)}")
    apt, package = ksource.find_debian_package(cache_dir() / "apt", options.mirror,
                                              options.suites)
    return SourcePlan(ksource.SourceKind.DEBIAN,
                      f"debian {package.name} {package.deb_version} ({package.suite})",
                      f"debian:{package.name}={package.deb_version}", package.version,
                      apt=apt, package=package)


def up_to_date(plan: SourcePlan, fragment_hash: str) -> store.Entry | None:
    for entry in store.installed():
        if entry.record.source_id == plan.source_id and \
                entry.record.fragment_hash == fragment_hash:
            return entry
    return None


# --- Running make with a progress display ------------------------------------------


class Progress:
    """Turns make's output into `compiling: 42%` (a single updating line on a tty)."""

    def __init__(self, expected: int, out: Callable[[str], None] | None = None) -> None:
        self.expected = max(expected, 1)
        self.compiled = 0
        self.linking = False
        self._shown = -1
        self._tty = sys.stderr.isatty()
        self._out = out

    def feed(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        if words[0] == "CC":
            self.compiled += 1
            self._show()
        elif words[0] in ("LINK", "LD") and words[-1] in ("linux", "vmlinux") \
                and not self.linking:
            self.linking = True
            self._emit("linking", final=True)

    def _percent(self) -> int:
        # An estimate: never claim 100% before make is done.
        return min(99, self.compiled * 100 // self.expected)

    def _show(self) -> None:
        percent = self._percent()
        step = 1 if self._tty else 10
        if percent // step != self._shown // step:
            self._shown = percent
            self._emit(f"compiling: {percent}% ({self.compiled} files)", final=False)

    def _emit(self, text: str, *, final: bool) -> None:
        if self._out is not None:
            self._out(text)
        elif self._tty:
            end = "\n" if final else ""
            sys.stderr.write(f"\r\033[Kumlroot: {text}{end}")
            sys.stderr.flush()
        else:
            log.say(text)

    def done(self) -> None:
        if self._tty and not self.linking:
            sys.stderr.write("\n")


def run_logged(argv: list[str], *, cwd: Path, log_file: Path, step: str,
               progress: Progress | None = None) -> None:
    """Run a build command with all output appended to `log_file`; fail with its path."""
    log.show_command(argv)
    with log_file.open("a") as sink:
        sink.write(f"+ {' '.join(argv)}\n")
        sink.flush()
        # Its own process group, so that an interrupted build stops every job.
        process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", start_new_session=True)
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sink.write(line)
                if progress is not None:
                    progress.feed(line)
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            raise
        finally:
            status = process.wait()
    if progress is not None:
        progress.done()
    if status != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        raise UmlrootError(f"{step} failed: `{' '.join(argv[:4])}...` exited with {status}",
                           hint=f"the full build log is {log_file}",
                           details="\n".join(tail), exit_code=ExitCode.FAILED)


def merge_fragment(config_text: str, options: list[fragment.Option]) -> str:
    """Put the fragment's options over a .config: drop their old lines, append the new ones."""
    names = {o.name for o in options}
    kept = []
    for line in config_text.splitlines():
        parsed = fragment.parse_config(line)
        unset = line.startswith("# CONFIG_") and line.endswith(" is not set")
        name = next(iter(parsed), None) if parsed else (line.split()[1] if unset else None)
        if name not in names:
            kept.append(line)
    kept.append("# --- umlroot kernel.config ---")
    for option in options:
        kept.append(f"{option.name}={option.value}" if option.value is not None
                    else f"# {option.name} is not set")
    return "\n".join(kept) + "\n"


@dataclasses.dataclass(frozen=True)
class Workspace:
    root: Path
    log_file: Path


def _make(tree: Path, obj: Path | None, *targets: str) -> list[str]:
    argv = ["make", "-C", str(tree), "ARCH=um"]
    if obj is not None:
        argv.append(f"O={obj}")
    return argv + list(targets)


def obtain_tree(plan: SourcePlan, ws: Workspace) -> tuple[Path, Path | None]:
    """(source tree, separate object dir or None for an in-tree build)."""
    if plan.kind is ksource.SourceKind.TREE:
        assert plan.path is not None
        # Built out of tree (plan_source checked it is clean): the user's tree stays as it was.
        return plan.path, ws.root / "obj"
    tarball = plan.path  # a download's was fetched by fetch_source
    if plan.kind is ksource.SourceKind.DEBIAN:
        assert plan.apt is not None and plan.package is not None
        log.say(f"fetching: {plan.package.name} {plan.package.deb_version}")
        deb = plan.apt.download(plan.package, ws.root / "download")
        tarball = ksource.tarball_from_deb(deb, ws.root / "download")
        deb.unlink()
    assert tarball is not None
    log.say(f"unpacking: {tarball.name}")
    return ksource.unpack_tarball(tarball, ws.root / "src"), None


def apply_patches(tree: Path, plan: SourcePlan, ws: Workspace) -> tuple[str, ...]:
    """umlroot's kernel patches, on trees umlroot unpacked itself; a tree the
    user named is built out of tree and never modified. Returns the names
    applied (they go into the build record)."""
    shipped = patches.shipped_patches()
    if plan.kind is ksource.SourceKind.TREE:
        if shipped:
            log.warn("umlroot's kernel patches are not applied to a tree you named "
                     "(guest system calls will be slower): "
                     + ", ".join(patch.name for patch in shipped))
        return ()
    for patch in shipped:
        log.say(f"patching: {patch.name}")
        patch_file = ws.root / patch.name
        patch_file.write_bytes(patch.text)
        run_logged(patches.patch_command(patch_file), cwd=tree, log_file=ws.log_file,
                   step=f"applying {patch.name}")
    return tuple(patch.name for patch in shipped)


def configure(tree: Path, obj: Path | None, options: list[fragment.Option],
              ws: Workspace) -> Path:
    log.say("configuring: defconfig + umlroot's kernel.config")
    run_logged(_make(tree, obj, "defconfig"), cwd=tree, log_file=ws.log_file, step="defconfig")
    config = (obj or tree) / ".config"
    config.write_text(merge_fragment(config.read_text(), options))
    run_logged(_make(tree, obj, "olddefconfig"), cwd=tree, log_file=ws.log_file,
               step="olddefconfig")
    fragment.verify_config(options, config)
    return config


def install(binary: Path, record: store.Record) -> store.Entry:
    """Copy the binary + record into place atomically (stage, then rename)."""
    kernels = store.kernels_dir()
    kernels.mkdir(parents=True, exist_ok=True)
    name = store.entry_name(record.version, record.fragment_hash)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=kernels))
    shutil.copy2(binary, staging / store.BINARY)
    (staging / store.RECORD).write_text(record.to_json())
    staging.chmod(0o755)
    final = kernels / name
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{name}.", dir=kernels))
        final.rename(old / name)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)
    return store.Entry(final, record)


def _expected_steps() -> int:
    entries = store.installed()
    steps = [e.record.compile_steps for e in entries if e.record.compile_steps]
    return steps[-1] if steps else DEFAULT_COMPILE_STEPS


def build_kernel(options: BuildOptions) -> BuildResult:
    missing = missing_tools()
    if missing:
        raise UmlrootError(f"missing build tools: {', '.join(missing)}",
                           hint="install them, e.g. `apt-get install gcc make flex bison bc "
                                "xz-utils patch libc6-dev`", exit_code=ExitCode.FAILED)
    text = fragment.fragment_text()
    frag_options = fragment.parse_fragment(text)
    # Planning runs under the lock too: it shares the private APT state in the cache.
    with exclusive_lock(store.lock_path(), what="another kernel build", say=log.say):
        plan = plan_source(options)
        # A tree the user named is not patched (see apply_patches): say so in its id.
        unpatched = plan.kind is ksource.SourceKind.TREE
        frag_hash = patches.build_id(text, [] if unpatched else None)
        if plan.version is not None:
            for warning in check_buildable(plan.version):
                log.warn(warning)
        existing = up_to_date(plan, frag_hash)
        if existing is not None and not options.force:
            log.say(f"kernel {existing.record.version} from {plan.description} with this "
                    f"kernel.config is built already: {existing.binary} (nothing to do; "
                    "--force rebuilds)")
            return BuildResult(Outcome.UP_TO_DATE, existing)
        return _build_locked(options, fetch_source(plan), frag_options, frag_hash)


def fetch_source(plan: SourcePlan) -> SourcePlan:
    """Download (and verify) a tarball before any build directory exists: a
    failed download leaves nothing but its resumable .part in the cache."""
    if plan.kind is not ksource.SourceKind.DOWNLOAD or plan.path is not None:
        return plan
    assert plan.url is not None and plan.sha256 is not None
    return dataclasses.replace(plan, path=download.fetch(plan.url, plan.sha256))


def _build_locked(options: BuildOptions, plan: SourcePlan,
                  frag_options: list[fragment.Option], frag_hash: str) -> BuildResult:
    started = time.monotonic()
    build_root = cache_dir() / "build"
    build_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="kernel-", dir=build_root))
    ws = Workspace(root, root / "build.log")
    log.say(f"building in {root} (log: {ws.log_file})")
    ok = False
    try:
        tree, obj = obtain_tree(plan, ws)
        version = KernelVersion.from_makefile(tree / "Makefile")
        warnings = check_buildable(version)  # refuses < 6.13 whatever the name said
        if plan.version is None:
            for warning in warnings:
                log.warn(warning)
        applied = apply_patches(tree, plan, ws)
        config = configure(tree, obj, frag_options, ws)
        jobs = options.jobs or os.cpu_count() or 1
        progress = Progress(_expected_steps())
        log.say(f"compiling: kernel {version} with {jobs} jobs (about 5-10 minutes)")
        run_logged(_make(tree, obj, f"-j{jobs}", "linux"), cwd=tree, log_file=ws.log_file,
                   step="compiling", progress=progress)
        record = store.Record(
            version=str(version), fragment_hash=frag_hash, source=plan.description,
            source_id=plan.source_id,
            smp=fragment.smp_enabled(fragment.parse_config(config.read_text())),
            build_seconds=round(time.monotonic() - started, 1),
            built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            compile_steps=progress.compiled, patches=applied)
        entry = install((obj or tree) / "linux", record)
        ok = True
    finally:
        if not ok:
            # The log is what a failed build leaves: the tree is gigabytes.
            kept_log = build_root / f"{root.name}.log"
            with contextlib.suppress(OSError):
                os.replace(ws.log_file, kept_log)
                log.say(f"build log kept: {kept_log}")
        if not options.keep_tree:
            shutil.rmtree(root, ignore_errors=True)
    log.say(f"installed {entry.binary} (kernel {record.version}, built in "
            f"{record.build_seconds / 60:.1f} min)")
    if options.keep_tree:
        log.say(f"build tree kept: {root}")
    _check_boots(entry)
    return BuildResult(Outcome.BUILT, entry)


def _check_boots(entry: store.Entry) -> None:
    """Boot the new kernel once: records the verdict (and lpj) for `umlroot run`."""
    result = probe.probe(entry.binary, probe.ProbeSettings(seccomp=True), use_cache=False)
    if result.ok:
        log.say(f"boot check: {result.explain()}")
        return
    fallback = probe.probe(entry.binary, probe.ProbeSettings(), use_cache=False)
    if fallback.ok:
        log.warn(f"seccomp mode: the new kernel {result.explain()}; ptrace mode works "
                 f"({fallback.explain()})")
        return
    raise UmlrootError(f"the new kernel {entry.binary} {fallback.explain()}",
                       hint="run `umlroot doctor` for the host checks",
                       exit_code=ExitCode.FAILED)
