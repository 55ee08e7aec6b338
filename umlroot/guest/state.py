"""`--state FILE`: a scratch disk that persists between runs.

A state file is a sparse ext4 image (journal on, unlike a throwaway
scratch disk) holding the overlay's upper and work dirs, plus a small text
file `/umlroot-state` in its root:

    format=1             layout version (a newer one is refused)
    created=<seconds>    when umlroot made the file
    runs=<n>             runs that finished on it
    last_seen=<sec.ns>   start of the last finished run (host clock)
    paths=<n>            entries in the upper layer after that run

The host writes it at creation and reads it with `debugfs -R 'cat ...'`
(e2fsprogs, works unprivileged); the guest init updates it after each run
(guest-init/state.c). One run at a time: an exclusive flock on the file for
the whole run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from umlroot import log
from umlroot.cache import exclusive_lock
from umlroot.errors import ExitCode, UmlrootError
from umlroot.guest.scratch import find_tool, format_ext4

STATE_SIZE = 64 << 30
META_NAME = "umlroot-state"
FORMAT = 1
# UML's ubdN= option splits on ',' (COW files) and cannot carry some bytes.
_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@~%")


@dataclasses.dataclass(frozen=True)
class StateInfo:
    path: Path
    size: int          # apparent size of the image
    allocated: int     # bytes the host actually stores
    format: int
    created: float | None
    runs: int
    last_run: float | None
    paths: int


def _debugfs(image: Path, request: str, *, write: bool = False) -> str:
    """Run one debugfs request; debugfs exits 0 even on errors, so any
    stderr line other than its version banner is a failure."""
    debugfs = find_tool("debugfs")
    if debugfs is None:
        raise UmlrootError("debugfs not found (needed for --state)", hint="install e2fsprogs")
    argv = [debugfs, *(["-w"] if write else []), "-R", request, str(image)]
    log.show_command(argv)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    errors = [line for line in result.stderr.splitlines()
              if line.strip() and not line.startswith("debugfs ")]
    if result.returncode != 0 or errors:
        raise OSError(errors[0] if errors else f"debugfs exited {result.returncode}")
    return result.stdout


def parse_meta(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _number(fields: dict[str, str], key: str) -> float | None:
    try:
        return float(fields[key])
    except (KeyError, ValueError):
        return None


def read_info(path: Path) -> StateInfo:
    """What a state file holds; a one-line UmlrootError if it is not one."""
    try:
        st = path.stat()
    except OSError as error:
        raise UmlrootError(f"state file {path}: {error.strerror}") from None
    if st.st_size == 0:
        raise UmlrootError(f"state file {path} is empty (it is made on first use by "
                           "`umlroot run --state`)")
    try:
        text = _debugfs(path, f"cat /{META_NAME}")
    except OSError as error:
        raise UmlrootError(f"{path} is not a umlroot state file, or it is damaged ({error})",
                           hint="move it away; `umlroot run --state FILE` makes a new one") from None
    fields = parse_meta(text)
    fmt = int(_number(fields, "format") or 0)
    if fmt < 1:
        raise UmlrootError(f"{path} is not a umlroot state file (no format in /{META_NAME})")
    return StateInfo(
        path=path, size=st.st_size, allocated=st.st_blocks * 512, format=fmt,
        created=_number(fields, "created"), runs=int(_number(fields, "runs") or 0),
        last_run=_number(fields, "last_seen") or None,
        paths=int(_number(fields, "paths") or 0),
    )


def _check_format(info: StateInfo) -> None:
    if info.format > FORMAT:
        raise UmlrootError(
            f"state file {info.path} was made by a newer umlroot (format {info.format}, "
            f"this umlroot reads format {FORMAT})",
            hint="upgrade umlroot, or use another state file")


def create_state(path: Path) -> None:
    """Format `path` as a fresh state: sparse ext4 with a journal, plus the
    metadata file."""
    format_ext4(path, STATE_SIZE, durable=True)
    meta = f"format={FORMAT}\ncreated={int(time.time())}\nruns=0\nlast_seen=0\npaths=0\n"
    with tempfile.NamedTemporaryFile("w", prefix="umlroot-state-") as f:
        f.write(meta)
        f.flush()
        try:
            _debugfs(path, f"write {f.name} {META_NAME}", write=True)
        except OSError as error:
            raise UmlrootError(f"cannot initialise the state file {path}: {error}") from None


def _check_path(path: Path) -> None:
    bad = sorted(set(str(path)) - _SAFE_CHARS)
    if bad:
        raise UmlrootError(f"--state {path}: the path holds {''.join(bad)!r}, which UML's disk "
                           "option cannot carry", hint="use a path of letters, digits and ./_-+")
    if path.is_dir():
        raise UmlrootError(f"--state {path}: is a directory")


def _is_scratch_mount_error(error: UmlrootError) -> bool:
    return "scratch disk" in error.message


@contextlib.contextmanager
def open_state(path: Path, *, wait: bool) -> Iterator[Path]:
    """Lock the state file for the run (creating it on first use) and yield
    the disk image to attach as the scratch disk."""
    path = Path(os.path.abspath(path))
    _check_path(path)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(path, what=f"the state file {path}", wait=wait))
        except BlockingIOError:
            raise UmlrootError(f"the state file {path} is in use by another umlroot run",
                               hint="drop --no-wait to wait for it",
                               exit_code=ExitCode.UMLROOT) from None
        except OSError as error:
            raise UmlrootError(f"--state {path}: {error.strerror}") from None
        if path.stat().st_size == 0:
            try:
                create_state(path)
            except BaseException:
                os.truncate(path, 0)  # the next run starts afresh
                raise
        else:
            _check_format(read_info(path))
        try:
            yield path
        except UmlrootError as error:
            if not _is_scratch_mount_error(error):
                raise
            raise UmlrootError(
                f"the state file {path} cannot be mounted in the guest (damaged, or not made "
                f"by umlroot): {error.message.rsplit(': ', 1)[-1]}",
                details=error.details,
                hint=f"check it with `e2fsck -f {path}`, or move it away to start afresh",
            ) from None


def format_info(info: StateInfo) -> str:
    def when(stamp: float | None) -> str:
        if not stamp:
            return "never"
        return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")

    def size(n: int) -> str:
        if n < 1024:
            return f"{n} B"
        value = n / 1024
        for unit in ("KiB", "MiB", "GiB"):
            if value < 1024:
                return f"{value:.1f} {unit}"
            value /= 1024
        return f"{value:.1f} TiB"

    rows = [
        ("file", str(info.path)),
        ("size", f"{size(info.size)} (sparse: {size(info.allocated)} on disk)"),
        ("created", when(info.created)),
        ("runs", str(info.runs)),
        ("last run", when(info.last_run)),
        ("paths", str(info.paths)),
        ("format", str(info.format)),
    ]
    return "\n".join(f"{key + ':':<10} {value}" for key, value in rows)
