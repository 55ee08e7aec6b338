"""Writeback by extent, the host's half (guest-init/extents.c is the guest's).

During writeback the guest may send `XC` for a big file whose data is in the
overlay's upper layer: it has synced the file to the scratch disk, listed in
`<run dir>/xcopy` where its data lies in the scratch image, and created the
temporary file that it renames over the target afterwards. The host copies
those byte ranges into that file and answers `x 0`, or `x <errno>` when it
could not (the guest then copies the file itself). Blocks of zeros are not
written (holes stay holes, as in the guest's own sparse copy); the rest goes
with copy_file_range, which shares the blocks on a reflink filesystem.

The list: the destination's host path (hex), the file's size, then one line
per data extent, `logical physical length` (bytes).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

BLOCK = 4096
CHUNK = 1 << 20
ZERO_CHUNK = bytes(CHUNK)
ZERO_BLOCK = bytes(BLOCK)
TMP_PREFIX = b".umlroot-wb."
LIST_NAME = "xcopy"
# copy_file_range cannot do it here: write what was read instead.
NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


class Channel(Protocol):
    def send(self, line: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int


def parse_extent(line: bytes, size: int) -> Extent:
    """`logical physical length` of a file of `size` bytes; ValueError if malformed."""
    logical, physical, length = (int(word) for word in line.split())
    if min(logical, physical, length) < 0 or logical + length > size:
        raise ValueError(f"extent out of range: {line!r}")
    return Extent(logical, physical, length)


def parse_list(text: bytes) -> tuple[bytes, int, list[Extent]]:
    """The guest's list -> (destination, size, extents); ValueError if malformed."""
    lines = text.split(b"\n")
    if len(lines) < 2:
        raise ValueError("short extent list")
    path, size = bytes.fromhex(lines[0].decode()), int(lines[1])
    return path, size, [parse_extent(line, size) for line in lines[2:] if line]


class ScratchCopier:
    """Holds the scratch image open (the host unlinks a throwaway one once
    UML has it) and serves the guest's `XC` requests."""

    def __init__(self, image: Path, run_dir: Path, scopes: Sequence[bytes]) -> None:
        self._fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        # The host writes nowhere but under the writeback scopes, whatever
        # the guest names.
        self._scopes = [os.path.realpath(scope) for scope in scopes]
        self._list = run_dir / LIST_NAME
        self._buffer = bytearray(CHUNK)
        self._copy_range = True
        self.files = 0  # copied so far (--verbose says how many)
        self.bytes = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def copy_listed(self) -> int:
        """Copy what the list names; 0, or the errno of what went wrong."""
        try:
            path, _size, extents = parse_list(self._list.read_bytes())
            if (not os.path.basename(path).startswith(TMP_PREFIX)
                    or not self.in_scope(os.path.dirname(path))):
                return errno.EINVAL
            out = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                st = os.fstat(out)
                if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
                    return errno.EINVAL
                self.copy_extents(out, extents)
                self.files += 1
                self.bytes += sum(extent.length for extent in extents)
            finally:
                os.close(out)
        except OSError as error:
            return error.errno or errno.EIO
        except ValueError:
            return errno.EINVAL
        return 0

    def in_scope(self, directory: bytes) -> bool:
        """Whether the host may write in `directory`: a scope or under one."""
        real = os.path.realpath(directory)
        return any(real == scope or real.startswith(scope.rstrip(b"/") + b"/")
                   for scope in self._scopes)

    def copy_extents(self, out: int, extents: Sequence[Extent]) -> None:
        """Copy the extents' data from the image into `out` at their offsets,
        leaving blocks of zeros out (holes)."""
        for extent in extents:
            self._copy_extent(out, extent)

    def _copy_extent(self, out: int, extent: Extent) -> None:
        # bytearray methods only: they run in C (a memoryview's `in` and
        # `==` go element by element, 20x slower than the copy itself).
        buffer = self._buffer
        done = 0
        while done < extent.length:
            want = min(CHUNK, extent.length - done)
            if os.preadv(self._fd, [memoryview(buffer)[:want]],
                         extent.physical + done) != want:
                raise OSError(errno.EIO, "the scratch image ends inside a file's extent")
            zero = buffer == ZERO_CHUNK if want == CHUNK else buffer.count(0, 0, want) == want
            if not zero:
                self._copy_nonzero(out, want, extent.physical + done, extent.logical + done)
            done += want

    def _copy_nonzero(self, out: int, length: int, source: int, target: int) -> None:
        """Copy the blocks of the buffer's first `length` bytes (read from
        `source`) that are not all zeros."""
        buffer = self._buffer
        if buffer.find(ZERO_BLOCK, 0, length) < 0:
            self._copy(out, 0, length, source, target)
            return
        start = None
        for offset in range(0, length, BLOCK):
            end = min(offset + BLOCK, length)
            if buffer.count(0, offset, end) == end - offset:
                if start is not None:
                    self._copy(out, start, offset, source, target)
                    start = None
            elif start is None:
                start = offset
        if start is not None:
            self._copy(out, start, length, source, target)

    def _copy(self, out: int, begin: int, end: int, source: int, target: int) -> None:
        while begin < end:
            if self._copy_range:
                try:
                    n = os.copy_file_range(self._fd, out, end - begin, source + begin,
                                           target + begin)
                except OSError as error:
                    if error.errno not in NO_COPY_RANGE:
                        raise
                    self._copy_range = False
                    continue
            else:
                n = os.pwrite(out, memoryview(self._buffer)[begin:end], target + begin)
            if n <= 0:
                raise OSError(errno.EIO, "the copy made no progress")
            begin += n
