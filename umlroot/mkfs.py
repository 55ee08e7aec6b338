"""`umlroot mkfs TYPE SOURCE OUTPUT`: a filesystem image from a directory or
a tarball, like virt-make-fs, without KVM.

Order of work: check everything that can be checked (combinations, tools,
paths the guest must see), measure the content, then build in a staging
directory beside OUTPUT (`.OUTPUT.XXXX.umlroot-mkfs`): host steps, guest
steps (`umlroot run` with the image attached as a disk, running
`_guest_mkfs.py`), trimming, GPT, verity. Only a finished image is renamed
to OUTPUT; the staging directory goes away whatever happens, so a failed or
interrupted run leaves OUTPUT as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from umlroot import _guest_mkfs, log
from umlroot.errors import ExitCode, UmlrootError
from umlroot.gpt import wrap_in_gpt, write_gpt
from umlroot.imagesize import image_length
from umlroot.mkfs_options import (
    MkfsOptions,
    Owners,
    Partitioning,
    SourceKind,
    check_combination,
    source_kind,
)
from umlroot.mkfs_plan import (
    DISK_NAME,
    PACKAGES,
    Plan,
    host_only,
    make_plan,
    partition_type,
)
from umlroot.mkfs_size import Content, image_size, measure
from umlroot.runner import RunOptions, run
from umlroot.scratch import find_tool
from umlroot.state import read_info

# The guest has its own /run, /dev, /proc and /sys: host files there are
# out of its sight. /tmp is the host's only when umlroot runs from there.
_GUEST_PRIVATE = ("/run", "/dev", "/proc", "/sys")
_ROOT_HASH_RE = re.compile(r"^Root hash:\s*([0-9a-f]+)\s*$", re.MULTILINE)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def absolute(options: MkfsOptions) -> MkfsOptions:
    """Every path absolute: the guest gets them as they are, and its working
    directory may change (see guest_sees_tmp)."""
    def fix(path: Path | None) -> Path | None:
        return Path(os.path.abspath(path)) if path is not None else None

    return replace(options, source=Path(os.path.abspath(options.source)),
                   output=Path(os.path.abspath(options.output)),
                   state=fix(options.state), luks_key=fix(options.luks_key))


def guest_reads(options: MkfsOptions) -> list[Path]:
    paths = [options.source, Path(sys.executable), Path(_guest_mkfs.__file__)]
    if options.luks_key is not None:
        paths.append(options.luks_key)
    return paths


def check_visible(paths: Sequence[Path]) -> None:
    for path in paths:
        real = os.path.realpath(path)
        for top in _GUEST_PRIVATE:
            if _under(real, top):
                raise UmlrootError(f"{path}: under {top}, which the guest has a fresh one of",
                                   hint="move it to a directory elsewhere (your home, /var/tmp)")


@contextlib.contextmanager
def guest_sees_tmp(paths: Sequence[Path]) -> Iterator[None]:
    """The guest shows the host's /tmp (instead of a fresh tmpfs) when the
    command's working directory is under it: run from there if the guest
    must read something in /tmp."""
    cwd = os.getcwd()
    if _under(cwd, "/tmp") or not any(_under(os.path.realpath(p), "/tmp") for p in paths):
        yield
        return
    os.chdir("/tmp")
    try:
        yield
    finally:
        os.chdir(cwd)


def check_tools(tools: Sequence[str]) -> None:
    for tool in tools:
        if find_tool(tool) is None:
            package = PACKAGES.get(tool, tool)
            raise UmlrootError(f"{tool} not found (umlroot mkfs runs the host's own tools, "
                               "in the guest too)", hint=f"install it: apt-get install {package}")


def check_inputs(options: MkfsOptions) -> None:
    if options.state is not None:
        read_info(options.state)  # one line if it is not an existing state file
    if options.luks_key is not None:
        try:
            with open(options.luks_key, "rb") as key:
                if not key.read(1):
                    raise UmlrootError(f"--luks {options.luks_key}: the key file is empty")
        except OSError as error:
            raise UmlrootError(f"--luks {options.luks_key}: {error.strerror}") from None
    if not options.output.parent.is_dir():
        raise UmlrootError(f"OUTPUT {options.output}: the directory {options.output.parent} "
                           "does not exist")


@contextlib.contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A private directory beside OUTPUT (same filesystem: publishing is a
    rename), removed afterwards with whatever is left in it."""
    try:
        path = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".umlroot-mkfs",
                                     dir=output.parent))
    except OSError as error:
        raise UmlrootError(f"OUTPUT {output}: cannot create a file in {output.parent}: "
                           f"{error.strerror}") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_host(argv: Sequence[str]) -> str:
    """One offline tool; its output is only shown when it fails."""
    found = find_tool(argv[0])
    assert found is not None  # check_tools ran
    full = [found, *argv[1:]]
    log.show_command(full)
    result = subprocess.run(full, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        lines = (result.stderr + result.stdout).strip().splitlines()
        raise UmlrootError(f"{argv[0]} failed with status {result.returncode}: "
                           f"{lines[-1] if lines else 'no message'}",
                           hint="rerun with --debug to see the command")
    return result.stdout


def run_guest(plan: Plan, disk: Path, options: MkfsOptions) -> int:
    script = Path(_guest_mkfs.__file__)
    payload = json.dumps({"steps": plan.guest, "verbose": options.verbose})
    argv = [sys.executable, "-I", "-B", str(script), payload]
    log.debug(f"guest steps: {payload}")
    # The staging file's name ends the spec ("image"), so the options after
    # it cannot be mistaken for part of the path.
    run_options = RunOptions(argv=[os.fsencode(a) for a in argv], writeback=False,
                             state=options.state, disks=(f"{disk}:name={DISK_NAME}",),
                             real_owners=options.owners is Owners.REAL)
    with guest_sees_tmp(guest_reads(options)):
        return run(run_options)


def verity_paths(output: Path) -> tuple[Path, Path]:
    """systemd's names for the hash tree and root hash of an image: FOO.raw
    has FOO.verity and FOO.roothash beside it; other names get the suffix
    added (portablectl, systemd-dissect and RootImage= look there)."""
    stem = output.name.removesuffix(".raw")
    return output.with_name(stem + ".verity"), output.with_name(stem + ".roothash")


def add_verity(image: Path, hash_file: Path) -> str:
    hash_file.touch()
    stdout = run_host(["veritysetup", "format", str(image), str(hash_file)])
    match = _ROOT_HASH_RE.search(stdout)
    if match is None:
        raise UmlrootError("veritysetup format printed no root hash")
    return match.group(1)


def needed_tools(options: MkfsOptions, plan: Plan) -> list[str]:
    tools = plan.tools
    if options.partition is Partitioning.GPT:
        tools.append("sfdisk")
    if options.verity:
        tools.append("veritysetup")
    return tools


def _measure(options: MkfsOptions, kind: SourceKind) -> Content | None:
    if options.size is not None and not options.size.relative:
        return None
    return measure(options.source, kind)


def build(options: MkfsOptions, kind: SourceKind, stage: Path) -> tuple[Path, str | None] | int:
    """Make the image in STAGE; the finished file and the root hash, or the
    guest's exit status when it failed (it has said why)."""
    writes_file = options.fstype.writes_file
    # An offline tool writing its own file needs no size (and the walk over
    # the tree costs as much as a small image).
    sized = not (writes_file and host_only(options, kind))
    content = _measure(options, kind) if sized else None
    size = image_size(options, content) if sized else 0
    image = stage / "image"
    plan = make_plan(options, kind, content, image, size)
    check_tools(needed_tools(options, plan))
    if sized:
        with open(image, "wb") as f:
            f.truncate(size)  # sparse
        if options.partition is Partitioning.GPT and not writes_file:
            write_gpt(image, partition_type(options))
    for argv in plan.host:
        run_host(argv)
    if plan.guest:
        status = run_guest(plan, image, options)
        if status != 0:
            return status
        if writes_file:
            os.truncate(image, image_length(options.fstype, image))
    if writes_file and options.partition is Partitioning.GPT:
        disk = stage / "disk"
        wrap_in_gpt(image, disk, partition_type(options))
        image = disk
    root_hash = add_verity(image, stage / "verity") if options.verity else None
    return image, root_hash


def only_yours(top: Path) -> bool:
    """Whether every entry of the tree is owned by you (uid and gid)."""
    uid, gid = os.getuid(), os.getgid()
    stack = [str(top)]
    st = os.lstat(top)
    if (st.st_uid, st.st_gid) != (uid, gid):
        return False
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    return False
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return True


def resolve_owners(options: MkfsOptions, kind: SourceKind) -> MkfsOptions:
    """The default (your files root's) for a tree of only your files is
    --all-root, which the offline tools do without booting a guest."""
    if (kind is SourceKind.DIRECTORY and options.owners is Owners.YOURS_AS_ROOT
            and only_yours(options.source)):
        return replace(options, all_root=True)
    return options


def make_image(options: MkfsOptions) -> int:
    options = absolute(options)
    kind = source_kind(options.source)
    check_combination(options, kind)
    try:
        options = resolve_owners(options, kind)
    except OSError as error:
        raise UmlrootError(f"SOURCE {options.source}: cannot read {error.filename}: "
                           f"{error.strerror}") from None
    check_visible(guest_reads(options))
    check_inputs(options)
    with staging(options.output) as stage:
        built = build(options, kind, stage)
        if isinstance(built, int):
            # The guest said why in one line; a signal's status stays.
            return built if built >= ExitCode.SIGNAL_BASE else ExitCode.UMLROOT
        image, root_hash = built
        if root_hash is not None:
            verity_file, root_hash_file = verity_paths(options.output)
            (stage / "roothash").write_text(root_hash + "\n")
            os.replace(stage / "verity", verity_file)
            os.replace(stage / "roothash", root_hash_file)
        os.replace(image, options.output)
    if root_hash is not None:
        print(root_hash, flush=True)
    return ExitCode.OK
