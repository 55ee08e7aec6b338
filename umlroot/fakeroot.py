"""`umlroot fakeroot`: fakeroot's semantics on top of `umlroot run`.

What fakeroot means, and what that is here:
- the command runs as root and every change it makes anywhere the user
  could write comes back: the writeback scope is `/` (`run --writable /`);
- with no command, the user's $SHELL (or /bin/sh) runs, interactive on a
  terminal;
- `-s FILE` saves the session's state (owners, modes, device nodes) to FILE
  on exit, `-i FILE` loads it first. The state is a `--state` file, so
  `umlroot fakeroot -i F -s F` and `umlroot run --state F` share one:
    -i F -s F    F is used in place (`--state F`), made if missing
    -s F         a fresh state, saved to F when the command finished
    -i F         a copy of F, thrown away afterwards (F is not changed)
    -i A -s B    a copy of A, saved to B when the command finished
  "Saved" means renamed over FILE, so a crash or a kill leaves FILE as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from umlroot import log
from umlroot.cache import exclusive_lock
from umlroot.errors import UmlrootError
from umlroot.rundir import parent_dir
from umlroot.runner import RunOptions, run
from umlroot.state import read_info

DEFAULT_SHELL = "/bin/sh"
# fakeroot's own save files are text: "dev=...,ino=...,mode=...".
_FAKEROOT_SAVE_PREFIX = b"dev="
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class FakerootOptions:
    command: Sequence[bytes]
    load: Path | None = None
    save: Path | None = None
    net: bool = False
    real_owners: bool = False


def shell_command(environ: Mapping[bytes, bytes] = os.environb) -> list[bytes]:
    """fakeroot without a command runs ${SHELL:-/bin/sh}."""
    return [environ.get(b"SHELL") or os.fsencode(DEFAULT_SHELL)]


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy src to dst (new), reading only src's data extents: a state file
    is a 64 GiB image holding a few MB."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                break  # a hole up to the end
            hole = os.lseek(fin.fileno(), data, os.SEEK_HOLE)
            while data < hole:
                chunk = os.pread(fin.fileno(), min(_COPY_CHUNK, hole - data), data)
                if not chunk:
                    break
                os.pwrite(fout.fileno(), chunk, data)
                data += len(chunk)
            pos = hole
        fout.truncate(size)


def _check_not_fakeroot_save(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(_FAKEROOT_SAVE_PREFIX))
    if head == _FAKEROOT_SAVE_PREFIX:
        raise UmlrootError(
            f"-i {path}: this is a save file of fakeroot itself; umlroot keeps its state "
            "in a disk image of its own and cannot read fakeroot's",
            hint="make the state again with `umlroot fakeroot -s FILE ...`")


def _runs(path: Path) -> int:
    return read_info(path).runs


@contextlib.contextmanager
def _work_state(load: Path | None, save: Path | None) -> Iterator[Path]:
    """A state file for this run only: a copy of `load`, or empty (made on
    first use by the run). Next to `save` when there is one, so that saving
    is a rename; removed afterwards unless it was saved."""
    parent = save.parent if save is not None else parent_dir()
    try:
        fd, name = tempfile.mkstemp(prefix=".umlroot-fakeroot-", suffix=".state", dir=parent)
    except OSError as error:
        raise UmlrootError(f"-s {save}: cannot create a file in {parent}: "
                           f"{error.strerror}") from None
    os.close(fd)
    work = Path(name)
    try:
        if load is not None:
            with exclusive_lock(load, what=f"the state file {load}"):
                copy_sparse(load, work)
        yield work
    finally:
        with contextlib.suppress(FileNotFoundError):
            work.unlink()


def _existing_load(load: Path | None) -> Path | None:
    """fakeroot goes on without a database that does not exist (with a
    message); so does this."""
    if load is None:
        return None
    if not load.exists():
        log.warn(f"state file {load} does not exist; starting with an empty state")
        return None
    if load.is_dir():
        raise UmlrootError(f"-i {load}: is a directory")
    _check_not_fakeroot_save(load)
    return load


def _same_file(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def run_fakeroot(options: FakerootOptions) -> int:
    argv = list(options.command) or shell_command()
    base = RunOptions(argv=argv, writable=(Path("/"),), net=options.net,
                      real_owners=options.real_owners)
    load, save = options.load, options.save
    if load is not None and save is not None and _same_file(load, save):
        if load.exists():
            _check_not_fakeroot_save(load)
        return run(dataclasses.replace(base, state=save))
    load = _existing_load(load)
    if load is None and save is None:
        return run(base)
    with _work_state(load, save) as work:
        before = _runs(work) if load is not None else 0
        status = run(dataclasses.replace(base, state=work))
        # Saved only when the command ran to its end in the guest (the
        # state counts finished runs), whatever its exit status, as fakeroot
        # saves on exit.
        if save is not None and work.stat().st_size and _runs(work) > before:
            os.replace(work, save)
        return status
