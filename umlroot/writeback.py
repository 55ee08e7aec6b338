"""Host side of writeback: report what the guest wrote back (or could not)."""

from __future__ import annotations

from pathlib import Path


def report_writeback(line: str | None, *, verbose: bool, run_dir: Path) -> None:
    """Print the one-line summary of the guest's `WB ...` report on stderr."""
    return None
