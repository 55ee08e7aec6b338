"""Writeback in batches, the host's half (guest-init/hostbatch.c is the guest's).

For small new files, a round trip per file through hostfs costs about 40
host system calls made one at a time by the UML kernel; here the host makes
about ten per file itself. During writeback the guest lists, in
`<run dir>/xbatch.<k>`, new files whose data lies in the scratch image and
the mode and times of the dirs that hold them, and sends `XB <k>`. The host
applies the list in order and answers `x 0 <lines>`, with one line per
exception in `<run dir>/xbatch.<k>.result`, or `x <errno> 0` when it applied
nothing (the guest then writes the batch itself). Meanwhile the guest lists
batch k+1; it reads the answer before it sends that one.

The list, one record after another (paths in hex, as the guest and the host
see them alike; times in seconds and nanoseconds):

    C <path> <size> <mode> <mtime s> <mtime ns>        a small file, then its
    <size bytes of data>                               data and a newline
    F <path> <size> <mode> <mtime s> <mtime ns> <n>    a bigger one, then n lines
    <logical> <physical> <length>                      of data extents (bytes)
    D <path> <mode or -> <mtime s> <mtime ns>          a dir's mode and mtime

Each file is written under a temporary name in its dir, given its mode and
mtime, and renamed over its target: the same steps, and the same atomicity,
as the guest's own writeback. The guest has already applied the rules
(conflicts, owners, what goes at all); the host checks only that every path
lies under a writeback scope.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from umlroot.guest.hostcopy import BLOCK, TMP_PREFIX, Channel, Extent, ScratchCopier, parse_extent

LIST_PREFIX = "xbatch."
SETID = stat.S_ISUID | stat.S_ISGID
# Dir fds kept open while a batch is applied: files of one dir come
# together, but a subdir's may come in between.
OPEN_DIRS = 32


@dataclasses.dataclass(frozen=True)
class NewFile:
    path: bytes
    size: int
    mode: int
    mtime_ns: int
    extents: list[Extent]  # where the data lies in the scratch image, or
    data: bytes | None = None  # the data itself


@dataclasses.dataclass(frozen=True)
class DirTimes:
    path: bytes
    mode: int | None  # None: leave the mode as it is
    mtime_ns: int


Entry = NewFile | DirTimes


def _nanoseconds(seconds: bytes, nanoseconds: bytes) -> int:
    ns = int(nanoseconds)
    if not 0 <= ns < 10**9:
        raise ValueError(f"nanoseconds out of range: {ns}")
    return int(seconds) * 10**9 + ns


def _mode(word: bytes) -> int:
    mode = int(word)
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode out of range: {mode}")
    return mode


class _Cursor:
    def __init__(self, text: bytes) -> None:
        self.text = text
        self.at = 0

    def line(self) -> bytes:
        end = self.text.find(b"\n", self.at)
        if end < 0:
            raise ValueError("a record without its newline")
        line = self.text[self.at:end]
        self.at = end + 1
        return line

    def take(self, size: int) -> bytes:
        if self.text[self.at + size:self.at + size + 1] != b"\n":
            raise ValueError("data shorter than its size")
        data = self.text[self.at:self.at + size]
        self.at += size + 1
        return data


def parse_batch(text: bytes) -> list[Entry]:
    """The guest's list -> entries; ValueError if malformed."""
    cursor = _Cursor(text)
    entries: list[Entry] = []
    while cursor.at < len(text):
        line = cursor.line()
        kind, *fields = line.split()
        if kind in (b"C", b"F") and len(fields) == (5 if kind == b"C" else 6):
            path, size, mode, sec, nsec = fields[:5]
            size_bytes = int(size)
            if kind == b"C":
                extents, data = [], cursor.take(size_bytes)
            else:
                extents = [parse_extent(cursor.line(), size_bytes)
                           for _ in range(int(fields[5]))]
                data = None
            entries.append(NewFile(bytes.fromhex(path.decode()), size_bytes, _mode(mode),
                                   _nanoseconds(sec, nsec), extents, data))
        elif kind == b"D" and len(fields) == 4:
            path, mode, sec, nsec = fields
            entries.append(DirTimes(bytes.fromhex(path.decode()),
                                    None if mode == b"-" else _mode(mode),
                                    _nanoseconds(sec, nsec)))
        else:
            raise ValueError(f"not a batch record: {line[:80]!r}")
    return entries


def _set_mtime(file: int | bytes, now: os.stat_result, mtime_ns: int) -> None:
    """mtime only (atime is the host's business); like the guest, let it go
    if the host refuses (the scope's own dir may be someone else's)."""
    try:
        if isinstance(file, int):
            os.utime(file, ns=(now.st_atime_ns, mtime_ns))
        else:
            os.utime(file, ns=(now.st_atime_ns, mtime_ns), follow_symlinks=False)
    except OSError:
        pass


def _write_nonzero(out: int, data: bytes) -> None:
    """Write `data` at offset 0, leaving 4 KiB blocks of zeros as holes (as
    the guest's sparse copy and the extent copy do)."""
    view = memoryview(data)
    for offset in range(0, len(data), BLOCK):
        end = min(offset + BLOCK, len(data))
        # bytes.count runs in C; a memoryview's would go element by element.
        if data.count(0, offset, end) != end - offset:
            os.pwrite(out, view[offset:end], offset)


class StepFailed(Exception):
    """A step of one entry failed; `step` is one word (the guest reads it with %s)."""

    def __init__(self, step: str, error: OSError) -> None:
        super().__init__(step)
        self.step = step
        self.errno = error.errno or errno.EIO


class _Dirs:
    """Open dir fds by path, the scope checked once per dir."""

    def __init__(self, copier: ScratchCopier) -> None:
        self._copier = copier
        self._fds: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    def fd(self, path: bytes) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        if not self._copier.in_scope(path):
            raise StepFailed("scope", OSError(errno.EPERM, "outside the writeback scope"))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise StepFailed("opendir", error) from None
        self._fds[path] = fd
        if len(self._fds) > OPEN_DIRS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class BatchWriter:
    """Applies the guest's batches with the scratch copier's image and scopes."""

    def __init__(self, copier: ScratchCopier, run_dir: Path) -> None:
        self._copier = copier
        self._run_dir = run_dir
        self._serial = 0
        self.files = 0  # written so far (--verbose says how many, and how long)
        self.seconds = 0.0

    def serve(self, number: str) -> str:
        """Apply batch `number`; the answer line for the guest."""
        if not number.isdigit():
            return f"x {errno.EINVAL} 0"
        listed = self._run_dir / f"{LIST_PREFIX}{number}"
        try:
            entries = parse_batch(listed.read_bytes())
            listed.unlink()
        except (OSError, ValueError):
            return f"x {errno.EINVAL} 0"
        started = time.monotonic()
        exceptions = self.apply(entries)
        self.seconds += time.monotonic() - started
        if exceptions:
            try:
                (self._run_dir / f"{LIST_PREFIX}{number}.result").write_bytes(
                    b"".join(exceptions))
            except OSError as error:
                return f"x {error.errno or errno.EIO} 0"
        return f"x 0 {len(exceptions)}"

    def apply(self, entries: Sequence[Entry]) -> list[bytes]:
        """Apply in order; one result line per entry that was not simply written."""
        exceptions: list[bytes] = []
        dirs = _Dirs(self._copier)
        try:
            for index, entry in enumerate(entries):
                try:
                    if isinstance(entry, NewFile):
                        setid_kept = self._write_file(dirs, entry)
                    else:
                        setid_kept = self._set_dir(entry)
                except StepFailed as failure:
                    exceptions.append(f"{index} F {failure.step} {failure.errno}\n".encode())
                    continue
                self.files += isinstance(entry, NewFile)
                if not setid_kept:
                    exceptions.append(f"{index} M\n".encode())
        finally:
            dirs.close()
        return exceptions

    def _write_file(self, dirs: _Dirs, entry: NewFile) -> bool:
        parent, name = os.path.split(entry.path)
        if not name or name in (b".", b".."):
            raise StepFailed("name", OSError(errno.EINVAL, "no name"))
        dir_fd = dirs.fd(parent or b"/")
        out, tmp_name = self._create(dir_fd)
        try:
            setid_kept = self._fill(out, entry)
        except StepFailed:
            os.close(out)
            os.unlink(tmp_name, dir_fd=dir_fd)
            raise
        try:
            os.close(out)
        except OSError as error:
            os.unlink(tmp_name, dir_fd=dir_fd)
            raise StepFailed("close", error) from None
        try:
            os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as error:
            os.unlink(tmp_name, dir_fd=dir_fd)
            raise StepFailed("rename", error) from None
        return setid_kept

    def _create(self, dir_fd: int) -> tuple[int, bytes]:
        while True:
            self._serial += 1
            tmp_name = TMP_PREFIX + b"h%d" % self._serial
            try:
                fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue  # left by an earlier run: another name
            except OSError as error:
                raise StepFailed("create", error) from None
            return fd, tmp_name

    def _fill(self, out: int, entry: NewFile) -> bool:
        """Data, mode, mtime; False if the host dropped setuid/setgid bits."""
        try:
            if entry.data is not None:
                _write_nonzero(out, entry.data)
            else:
                self._copier.copy_extents(out, entry.extents)
        except OSError as error:
            raise StepFailed("copy", error) from None
        try:
            os.fchmod(out, entry.mode)
            now = os.fstat(out)
        except OSError as error:
            raise StepFailed("chmod", error) from None
        try:
            if now.st_size != entry.size:  # a hole or zero blocks at the end
                os.ftruncate(out, entry.size)
        except OSError as error:
            raise StepFailed("copy", error) from None
        _set_mtime(out, now, entry.mtime_ns)
        return stat.S_IMODE(now.st_mode) & SETID == entry.mode & SETID

    def _set_dir(self, entry: DirTimes) -> bool:
        if not self._copier.in_scope(entry.path):
            raise StepFailed("scope", OSError(errno.EPERM, "outside the writeback scope"))
        setid_kept = True
        try:
            if not stat.S_ISDIR(os.lstat(entry.path).st_mode):
                raise OSError(errno.ENOTDIR, "not a directory")
            if entry.mode is not None:
                os.chmod(entry.path, entry.mode)
            now = os.lstat(entry.path)
        except OSError as error:
            raise StepFailed("chmod", error) from None
        if entry.mode is not None:
            setid_kept = stat.S_IMODE(now.st_mode) & SETID == entry.mode & SETID
        _set_mtime(entry.path, now, entry.mtime_ns)
        return setid_kept


class HostWrites:
    """What the guest asks the host to write during writeback: `XC`, a big
    file's extents (hostcopy.py), and `XB`, a batch of small files (above)."""

    REQUESTS = frozenset({"XC", "XB"})

    def __init__(self, image: Path, run_dir: Path, scopes: Sequence[bytes]) -> None:
        self.copier = ScratchCopier(image, run_dir, scopes)
        self.batches = BatchWriter(self.copier, run_dir)

    def serve(self, kind: str, rest: str, channel: Channel) -> None:
        """Answer the guest's `kind rest` line."""
        if kind == "XC":
            channel.send(f"x {self.copier.copy_listed()}")
        else:
            channel.send(self.batches.serve(rest))

    def close(self) -> None:
        self.copier.close()
