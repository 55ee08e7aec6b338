"""`--state FILE`: a scratch disk that persists between runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from umlroot.errors import UmlrootError


@contextlib.contextmanager
def open_state(path: Path, *, wait: bool) -> Iterator[Path]:
    """Lock the state file for the run (creating it on first use) and yield
    the disk image to attach as the scratch disk."""
    raise UmlrootError("--state is not implemented yet")
    yield path
