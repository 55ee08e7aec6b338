"""Messages to the user on stderr: progress, warnings, --debug command echo."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from os import PathLike

_debug = False


def enable_debug() -> None:
    global _debug
    _debug = True


def say(message: str) -> None:
    """A one-line progress or status message, `umlroot: ...`, on stderr."""
    print(f"umlroot: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"umlroot: warning: {message}", file=sys.stderr, flush=True)


def debug(message: str) -> None:
    if _debug:
        print(f"umlroot: debug: {message}", file=sys.stderr, flush=True)


def show_command(argv: Sequence[str | PathLike[str]]) -> None:
    """Under --debug, print a command so it can be pasted into a shell."""
    if _debug:
        print("+ " + shlex.join(str(a) for a in argv), file=sys.stderr, flush=True)
