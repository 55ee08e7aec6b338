"""Host side of writeback: report what the guest wrote back (or could not).

The guest init sends one control line, `WB key=value ...` (counts), or
`WB none` when nothing was in scope, and leaves the paths behind the counts
in `<run dir>/writeback.report`: lines `<kind>\\t[<detail>\\t]<path>`, with
backslash and newline in paths escaped as `\\\\` and `\\n` (see
guest-init/writeback.c). Nothing is printed when there is nothing to say.

Before it, `LOST <dev>:<count>:<errno> ...` when a guest block device lost
writes the host could not store (then `WB lost`: nothing was written
back, as the files may hold holes where their data was); after the final
sync of --state and --disk files, a LOST line says the same of them.
"""

from __future__ import annotations

import enum
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from umlroot import log

REPORT_NAME = "writeback.report"
NAMED_PATHS = 3  # paths named in a one-line summary without --verbose


class Kind(enum.Enum):
    CONFLICT = "conflict"
    OUTSIDE = "outside"
    OWNER = "owner"
    DEVICE = "device"
    SOCKET = "socket"
    XATTR = "xattr"
    MODEBITS = "modebits"
    FAILED = "failed"
    DENIED = "denied"


# What the host cannot hold, in the order the summary names it:
# (counter in the WB line, report kind, singular, plural).
_KEPT_INSIDE = (
    ("devices", Kind.DEVICE, "device node", "device nodes"),
    ("owners", Kind.OWNER, "owner change", "owner changes"),
    ("sockets", Kind.SOCKET, "socket", "sockets"),
    ("xattrs", Kind.XATTR, "path with xattrs", "paths with xattrs"),
    ("modebits", Kind.MODEBITS, "setuid/setgid bit the host refused",
     "setuid/setgid bits the host refused"),
    ("denied", Kind.DENIED, "change where the host denies you write access",
     "changes where the host denies you write access"),
)
# Output that did not arrive: (counter in the WB line, report kind).
_NOT_DELIVERED = (("failed", Kind.FAILED), ("conflicts", Kind.CONFLICT),
                  ("denied", Kind.DENIED))
_WRITTEN = (
    ("files", "file"), ("dirs", "dir"), ("symlinks", "symlink"), ("fifos", "FIFO"),
    ("hardlinks", "hard link"), ("metadata", "mode/time-only change"), ("deleted", "deletion"),
)


@dataclass(frozen=True)
class Entry:
    kind: Kind
    path: str
    detail: str | None = None


@dataclass(frozen=True)
class LostWrites:
    """Writes to one guest block device that the host could not store."""

    device: str      # ubda (the scratch disk or --state file), ubdb ... (--disk)
    count: int
    host_errno: int


def parse_lost(line: str | None) -> tuple[LostWrites, ...]:
    """`ubda:3:28 ubdb:1:5` (a LOST line's words) -> LostWrites, skipping junk."""
    lost: list[LostWrites] = []
    for word in (line or "").split():
        device, _, rest = word.partition(":")
        count, _, errno = rest.partition(":")
        if device and count.isdigit() and errno.isdigit():
            lost.append(LostWrites(device, int(count), int(errno)))
    return tuple(lost)


@dataclass
class WritebackReport:
    counts: dict[str, int] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    # Nothing was written back: the guest lost writes before writeback.
    skipped: bool = False
    lost: tuple[LostWrites, ...] = ()
    # Whether a path the host does not let you write is a failure (a scope
    # you named) or expected (scope `/`: everything you may write).
    denied_fails: bool = True
    # The one line that says which writes were lost, where and why (made
    # while the run directory still exists, for its free space).
    lost_message: str | None = None

    def count(self, key: str) -> int:
        return self.counts.get(key, 0)

    def _not_delivered(self) -> list[tuple[str, Kind]]:
        """The (counter, kind) pairs that mean output did not arrive: failed,
        conflicts, and denied where it counts."""
        return [(key, kind) for key, kind in _NOT_DELIVERED
                if kind is not Kind.DENIED or self.denied_fails]

    @property
    def undelivered(self) -> list[Entry]:
        """What should have come back and did not, with why; empty when all
        was delivered."""
        kinds = {kind for _key, kind in self._not_delivered()}
        return [entry for entry in self.entries if entry.kind in kinds]

    def delivered(self) -> bool:
        """Everything in scope reached the host, and no write was lost. From
        the counts: the report names at most a few paths of each kind."""
        return not self.lost and not self.skipped and not any(
            self.count(key) for key, _kind in self._not_delivered())

    def paths(self, kind: Kind) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind is kind]


def _unescape(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append("\n" if nxt == "n" else nxt)
        else:
            out.append(char)
    return "".join(out)


def parse_counts(line: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and value.isdigit():
            counts[key] = int(value)
    return counts


def parse_report(text: str) -> list[Entry]:
    entries: list[Entry] = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        try:
            kind = Kind(fields[0])
        except ValueError:
            continue  # a newer init's kind: ignore
        detail = fields[1] if len(fields) > 2 else None
        entries.append(Entry(kind, _unescape(fields[-1]), detail))
    return entries


def load(line: str | None, run_dir: Path, *, lost: str | None = None,
         denied_fails: bool = True) -> WritebackReport | None:
    """The report from the guest's `WB` and `LOST` lines; None when there
    was nothing in scope and nothing was lost."""
    lost_writes = parse_lost(lost)
    words = (line or "none").strip()
    if words == "lost":
        return WritebackReport(skipped=True, lost=lost_writes, denied_fails=denied_fails)
    if words == "none":
        return WritebackReport(lost=lost_writes) if lost_writes else None
    try:
        text = (run_dir / REPORT_NAME).read_text(errors="surrogateescape")
    except OSError:
        text = ""
    return WritebackReport(parse_counts(words), parse_report(text), lost=lost_writes,
                           denied_fails=denied_fails)


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _named(entries: Iterable[Entry], total: int) -> str:
    names = [entry.path for entry in entries][:NAMED_PATHS]
    more = total - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 and names else "")


def _parent_of_cwd_hint(outside: list[Entry]) -> str:
    try:
        cwd = os.getcwd()
    except OSError:
        return ""  # deleted during the run
    parent = os.path.dirname(cwd.rstrip("/")) or "/"
    if any(os.path.dirname(entry.path) == parent for entry in outside):
        return " (hint: --writable ..)"
    return ""


def summary_lines(report: WritebackReport, *, verbose: bool) -> list[str]:
    """The lines to print, without the `umlroot: ` prefix."""
    lines: list[str] = []
    if verbose:
        written = [_plural(report.count(key), noun) for key, noun in _WRITTEN
                   if report.count(key)]
        lines.append("wrote back: " + (", ".join(written) if written else "nothing"))
    failed = report.count("failed")
    if failed:
        first = report.paths(Kind.FAILED)
        what = f": {first[0].path}: {first[0].detail}" if first else ""
        lines.append(f"writeback failed for {_plural(failed, 'path')}{what}")
    conflicts = report.count("conflicts")
    if conflicts:
        lines.append(f"not written back, changed on the host during the run (the host's "
                     f"version kept): {_named(report.paths(Kind.CONFLICT), conflicts)}")
    outside = report.count("outside")
    if outside:
        entries = report.paths(Kind.OUTSIDE)
        lines.append(f"discarded {_plural(outside, 'change')} outside the writeback scope: "
                     f"{_named(entries, outside)}{_parent_of_cwd_hint(entries)}")
    kept = [_plural(report.count(key), one, many) for key, _kind, one, many in _KEPT_INSIDE
            if report.count(key)]
    if kept:
        in_state = report.count("state") > 0  # the init says whether it is a --state run
        where = "kept only inside (in the --state file): " if in_state else "kept only inside: "
        advice = "" if in_state else " (use --state to keep them, or write an archive/image)"
        lines.append(where + ", ".join(kept) + advice)
    if verbose:
        for entry in report.entries:
            detail = f" ({entry.detail})" if entry.detail else ""
            lines.append(f"  {entry.kind.value}: {entry.path}{detail}")
    return lines


def print_report(report: WritebackReport | None, *, verbose: bool) -> None:
    """Print the one-line summary of what the guest wrote back on stderr."""
    if report is None:
        return
    for text in summary_lines(report, verbose=verbose):
        log.say(text)


@dataclass(frozen=True)
class BlockStore:
    """The host file behind a guest block device, for messages."""

    what: str        # "the scratch disk", "the --state file", "disk root.img"
    where: Path      # the directory whose filesystem holds it
    hint: str = ""   # what to do about a full filesystem there


def _free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "free space unknown"
    return f"{free // 2**20} MiB free"


def lost_writes_line(lost: Iterable[LostWrites], stores: Mapping[str, BlockStore], *,
                     written_back: bool) -> str:
    """One line naming each device that lost writes, its host file, the
    host's error and the room left there, e.g. `the host could not store the
    scratch disk's writes (No space left on device in /tmp: 12 MB free);
    set TMPDIR to a larger filesystem`."""
    parts: list[str] = []
    for item in lost:
        store = stores.get(item.device, BlockStore(f"/dev/{item.device}", Path("/")))
        where = store.where
        reason = os.strerror(item.host_errno) if item.host_errno else "an I/O error"
        text = (f"the host could not store {_plural(item.count, 'write')} to {store.what} "
                f"({reason} in {where}: {_free_space(where)})")
        parts.append(text + (f"; {store.hint}" if store.hint else ""))
    return "; ".join(parts) + ("" if written_back else "; nothing was written back")
